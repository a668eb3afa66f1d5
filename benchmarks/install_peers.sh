#!/usr/bin/env bash
# Installs the peer libraries of `python -m benchmarks --suite peers` into the ACTIVE virtual
# environment (one with plif_jax installed), without replacing its jax/jaxlib/flax or torch.
#
#   . .venv/bin/activate && bash benchmarks/install_peers.sh
#
# - torch: the CPU wheel (on this project's machines a local wheel; elsewhere PyPI's CPU index:
#   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu).
# - Spyx 1.0 and snnTorch 1.0 resolve without touching jax or torch: pyproject's `peers` extra.
#   Spyx imports grain at top level (spyx.data); jax-tqdm, chex and toolz come along.
# - SpikingJelly 2.0 and Norse 1.1 declare torchvision (and SpikingJelly torchaudio), whose
#   resolution replaces the CPU torch by a CUDA build (+~5 GB): they go in with --no-deps. Their
#   core modules import only torch, numpy and (SpikingJelly) loguru/h5py; Norse needs nir and
#   nirtorch. Norse 1.1 is an sdist: pip builds it (pure Python, a few seconds).
set -euo pipefail
pip install 'torch==2.13.0'
pip install 'spyx==1.0.0' 'snntorch==1.0.0'
pip install --no-deps 'spikingjelly==2.0.0' 'norse==1.1.0' 'nirtorch==2.6' loguru h5py
python - <<'PY'
import jax, torch
import spyx, snntorch, norse.torch.module.lif_box, spikingjelly.activation_based.neuron
print("peers installed: jax", jax.__version__, "torch", torch.__version__, "spyx", spyx.__version__,
      "snntorch", snntorch.__version__)
PY
