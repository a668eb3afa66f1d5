"""Shared defaults for every plif_jax run (Fang et al., ICCV 2021; original codes/train_val.py).

A dataset config imports :func:`get_config`, sets ``dataset`` and changes a few fields. Every field
can be overridden on the command line, e.g.::

    python -m experiments.train --config configs/mnist.py --config.neuron.kind=lif

The defaults below are the paper's: PLIF with tau_0 = 2, max pooling, detached reset, ATan
surrogate (alpha 2), MSE on the firing rate, Adam 1e-3 with a periodic cosine schedule
(T_max 64, stepped per epoch), batch 16, 1024 epochs, protocol A (best test accuracy).
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    """Returns the shared configuration (no dataset chosen)."""
    config = ml_collections.ConfigDict()

    # --- Run -----------------------------------------------------------------------------------
    config.seed = 2020  # The reference's torch/numpy seed; here it seeds init, shuffling, dropout.
    # One of: mnist, fashion_mnist, cifar10, nmnist, cifar10dvs, dvsgesture, digits_events,
    # digits_static. Set by the dataset config.
    config.dataset = config_dict.placeholder(str)
    # 'A': train on the full train set, report the best test accuracy over all epochs.
    # 'B': train on a per-class 85/15 split, report the test accuracy at the best validation
    # accuracy (ties go to the later epoch, as in the reference's `<=`).
    config.protocol = "A"
    config.batch_size = 16  # Global training batch (split across devices), drop_last.
    config.eval_batch_size = 64  # Global test/validation batch; the last batch is padded+masked.
    config.num_epochs = 1024  # The paper's `-max_epoch 1024`.
    # Cap on training steps per epoch (-1: the whole epoch). Only for smoke runs and tests.
    config.steps_per_epoch = -1
    config.log_every_steps = 256  # Train loss/accuracy scalars every N steps (reference: 256).
    # Training steps per dispatch: K > 1 runs blocks of K steps as one compiled program, their
    # metrics read once per block (the same results as K = 1, bit for bit; a stop asked inside
    # a block stops at its end). 1: one dispatch per step.
    config.steps_per_dispatch = 1
    config.progress_bar = True  # tqdm bar with ETA on stderr.

    # --- Several seeds in one run (plif_jax.training.members)
    # ------------------------------------------
    # Members trained together in one compiled step over stacked states (1: an ordinary run).
    config.num_seeds = 1
    config.members = ml_collections.ConfigDict()
    # Init/dropout seeds, a comma list of num_seeds integers, e.g. "7,8,9" (None: seed, seed+1..).
    config.members.seeds = config_dict.placeholder(str)
    # Per-member values of fields that keep the step's shapes, "FIELD=V1,V2,...;FIELD=...":
    # neuron.init_tau (PLIF), optim.lr, neuron.alpha (with neuron.alpha_learnable=True).
    config.members.overrides = config_dict.placeholder(str)
    # 'shared': every member trains on the same batches (config.seed's order and augmentation);
    # 'per_member': member i shuffles and augments with its own seed.
    config.members.data_order = "shared"
    # How the k member steps are compiled: 'loop' (k copies of the step in one jitted function)
    # or 'vmap' (one batched program: grouped convolutions, slower on XLA:CPU; README).
    config.members.layout = "loop"

    # --- Checkpoints (Orbax, <workdir>/checkpoints) ----------------------------------------------
    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.keep = 3  # How many of the latest end-of-epoch checkpoints to keep.
    config.checkpoint.keep_best = True  # Also keep the best one (protocol A: test, B: val).

    # --- Devices -------------------------------------------------------------------------------
    config.num_devices = 0  # Local devices to shard the batch over (0: all of them).
    # Multi-host: call jax.distributed.initialize() (coordinator from the environment, e.g.
    # SLURM/TPU pods, or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID).
    config.distributed = False
    # Compute dtype: 'float32' (the paper) or 'bfloat16' (mixed precision; params stay float32).
    config.dtype = "float32"
    # Convolution/matmul precision: 'default' (the backend's: float32 on CPU, TF32 for float32 on
    # NVIDIA Ampere and later, one bfloat16 pass on TPU), 'high' or 'highest' (float32 everywhere,
    # slower on GPU/TPU). Not resume-critical: the same state, rounding-level differences.
    config.precision = "default"

    # --- Data ----------------------------------------------------------------------------------
    config.data = ml_collections.ConfigDict()
    # Where the raw data lies: the tfds data_dir of the static datasets (None: tfds's default,
    # $TFDS_DATA_DIR or ~/tensorflow_datasets); tonic's save_to for events (None: ~/event_data).
    config.data.root = config_dict.placeholder(str)
    # Event datasets: 'auto' (the original archives when ROOT holds them as the original README
    # lays them out, e.g. ROOT/DVS128Gesture/DvsGesture.tar.gz, else tonic's layout), 'original'
    # or 'tonic'. Only the original DVS128 Gesture archive gives the paper's 288-sample test set.
    config.data.source = "auto"
    # DVS128 Gesture training trials (original source): 'all' (98 trials, 1,176 samples) or
    # 'first_78_trials' (936 samples, the training set the paper's run actually had).
    config.data.dvsgesture_train = "all"
    # Converted event frames (None: ~/.cache/plif_jax/frames), keyed by every frame setting.
    config.data.cache_dir = config_dict.placeholder(str)
    config.data.T = 8  # Time steps (static nets: image repeats; events: frames).
    config.data.split_by = "number"  # Event binning: 'number' (equal counts, paper) or 'time'.
    config.data.normalization = config_dict.placeholder(str)  # Frame normalisation (None: counts).
    # True: drop the last N mod T events (tonic's ToFrame); False: the reference's last frame.
    config.data.drop_remainder = False
    config.data.val_ratio = 0.15  # Protocol B: per-class fraction of the train set held out.
    config.data.num_workers = 4  # Processes converting events to frames (first run only).
    config.data.prefetch = 2  # Batches prepared ahead of the device.
    # Keep the training split on the device and gather each batch there: 'auto' (when it takes
    # <= 1/4 of the device's memory; on CPU, of the machine's), 'true' or 'false'. The same
    # batches and results as from the host, bit for bit.
    config.data.on_device = "auto"
    # MNIST RandomAffine resampling: 'bilinear' or 'nearest' (torchvision's default).
    config.data.affine_interpolation = "bilinear"
    config.data.emulator_seed = 0  # digits_events only: seed of the saccade event emulator.

    # --- Model (plif_jax.models.create_model options) ------------------------------------------
    config.model = ml_collections.ConfigDict()
    config.model.name = config_dict.placeholder(str)  # None: the network the dataset feeds.
    config.model.channels = 128  # Conv channels (paper: 128; CIFAR-10: 256).
    config.model.number_layer = 2  # Conv blocks of the neuromorphic nets (N-MNIST 2, ...).
    config.model.hidden = config_dict.placeholder(int)  # Hidden FC width (None: paper's).
    config.model.pooling = "max"  # 'max' (paper) or 'avg' (ablation).
    # BatchNorm statistics: 'per_step' (the reference: T separate normalisations per iteration)
    # or 'folded' (one over T*B, faster, not the paper's).
    config.model.bn_mode = "per_step"
    config.model.dropout = 0.5  # Time-shared dropout probability before each FC layer.
    # Rematerialisation: run the spiking layers as a scan over chunks of this many time steps,
    # recomputing each chunk in the backward: the same results in less memory for more time
    # (BENCHMARKS.md, memory). None: off. Must divide T; needs bn_mode 'per_step'.
    config.model.remat_chunk = config_dict.placeholder(int)

    # --- Neuron --------------------------------------------------------------------------------
    config.neuron = ml_collections.ConfigDict()
    config.neuron.kind = "plif"  # 'plif' (learnable tau per layer) or 'lif' (fixed tau).
    config.neuron.init_tau = 2.0  # PLIF's tau_0 / LIF's tau; must be > 1.
    config.neuron.detach_reset = True  # No gradient through the spike in the hard reset.
    config.neuron.surrogate = "atan"  # Surrogate gradient: 'atan' (paper) or 'sigmoid'.
    config.neuron.alpha = 2.0  # Surrogate sharpness (ATan alpha 2 in every paper run).
    config.neuron.alpha_learnable = False  # One learnable alpha per layer (never used in paper).

    # --- Optimiser -----------------------------------------------------------------------------
    config.optim = ml_collections.ConfigDict()
    config.optim.lr = 1e-3  # Adam learning rate lr0.
    # Periodic cosine per epoch: lr(e) = 0.5 * lr0 * (1 + cos(pi * e / t_max)), period 2*t_max.
    config.optim.t_max = 64
    config.optim.b1 = 0.9  # Adam beta1 (torch default).
    config.optim.b2 = 0.999  # Adam beta2 (torch default).
    config.optim.eps = 1e-8  # Adam epsilon (torch default); no weight decay.

    return config
