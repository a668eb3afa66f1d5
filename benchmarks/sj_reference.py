"""The paper networks built in PyTorch + SpikingJelly 2.0: the oracle for parity tests and timing.

The architectures follow ``codes/models.py`` of the original repository
(fangwei123456/Parametric-Leaky-Integrate-and-Fire-Spiking-Neuron), NOT newer SpikingJelly's
``parametric_lif_net`` (which adds Linear biases, a second CIFAR-10 dropout and a 512-wide
CIFAR10-DVS FC). Module names equal the original's (``static_conv``, ``conv``, ``fc``),
so ``net.state_dict()`` loads into plif_jax with
:func:`plif_jax.models.porting.load_torch_state_dict`.

Two step modes:

* ``'s'`` (the paper's code): single-step layers; :func:`sj_forward` loops over ``t`` and every
  BatchNorm inside the loop normalises each step separately (``bn_mode='per_step'``).
* ``'m'``: multi-step layers on ``[T, B, ...]``; BatchNorm folds T into the batch
  (``bn_mode='folded'``, newer SpikingJelly's multi-step BN).

torch and spikingjelly are optional dependencies (the ``reference`` extra); they are imported
inside the functions only. This module is part of the benchmark harness and the tests, not of the
``plif_jax`` library (the wheel does not ship it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from plif_jax import models


def _sj():
    try:
        import torch
        from spikingjelly.activation_based import functional, layer, neuron, surrogate
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "benchmarks.sj_reference needs torch and spikingjelly 2.0: `pip install torch` then "
            "`pip install --no-deps spikingjelly==2.0.0 loguru h5py` (see pyproject's "
            "`reference` extra)"
        ) from err
    return torch, functional, layer, neuron, surrogate


def _step_mode(bn_mode: str | None, step_mode: str | None) -> str:
    """SpikingJelly's step mode for ``bn_mode``: per-step BatchNorm is 's', folded is 'm'."""
    mode_of = {"per_step": "s", "folded": "m"}
    if step_mode is None:
        step_mode = mode_of.get(bn_mode or "per_step", "s")
    if step_mode not in ("s", "m"):
        raise ValueError(f"step_mode must be 's' or 'm', got {step_mode!r}")
    if bn_mode is not None and bn_mode in mode_of and mode_of[bn_mode] != step_mode:
        raise ValueError(
            f"bn_mode={bn_mode!r} needs step_mode={mode_of[bn_mode]!r} in SpikingJelly, got "
            f"{step_mode!r}"
        )
    return step_mode


def build_sj_model(name: str, *, step_mode: str | None = None, **options: Any):
    """Builds the paper network ``name`` in torch + SpikingJelly 2.0 (float32, train mode).

    Args:
      name: one of :data:`plif_jax.models.NETWORKS`.
      step_mode: ``'s'`` (per-step BatchNorm, the paper) or ``'m'`` (folded BatchNorm). ``None``
        follows ``bn_mode`` (``'per_step'`` -> ``'s'``, ``'folded'`` -> ``'m'``).
      **options: the same options as :func:`plif_jax.models.create_model` (``dtype`` and
        ``input_layout`` are ignored: the torch net is NCHW, cast it with ``.double()`` etc.).

    Returns:
      A ``torch.nn.Module`` with ``static_conv`` (static nets), ``conv``, ``fc`` and ``boost``,
      plus attributes ``name``, ``T``, ``step_mode``, ``is_static``; run it with
      :func:`sj_forward`.

    Raises:
      ValueError: invalid options (as ``create_model``), or ``step_mode`` inconsistent with
        ``bn_mode``, or ``alpha_learnable`` (SpikingJelly 2.0's ATan has no learnable alpha).
    """
    torch, _, layer, neuron, surrogate = _sj()
    nn = torch.nn
    sm = step_mode = _step_mode(options.get("bn_mode"), step_mode)
    cfg = models.resolve(name, **options)
    if cfg.alpha_learnable:
        raise ValueError("SpikingJelly 2.0's surrogate.ATan has no learnable alpha; use False")
    sg_cls = {"atan": surrogate.ATan, "sigmoid": surrogate.Sigmoid}[cfg.surrogate]
    sg_kwargs = {} if cfg.surrogate_alpha is None else {"alpha": cfg.surrogate_alpha}

    def spiking():
        common = dict(
            decay_input=True,
            v_threshold=1.0,
            v_reset=0.0,
            surrogate_function=sg_cls(**sg_kwargs),
            detach_reset=cfg.detach_reset,
            step_mode=sm,
        )
        if cfg.neuron == "plif":
            return neuron.ParametricLIFNode(init_tau=cfg.init_tau, **common)
        return neuron.LIFNode(tau=cfg.init_tau, **common)

    def pool():
        cls = layer.MaxPool2d if cfg.pooling == "max" else layer.AvgPool2d
        return cls(2, 2, step_mode=sm)

    def conv(i, o):
        return layer.Conv2d(i, o, kernel_size=3, padding=1, bias=False, step_mode=sm)

    def bn(c):
        return layer.BatchNorm2d(c, step_mode=sm)

    def fc(i, o):
        return layer.Linear(i, o, bias=False, step_mode=sm)

    c = cfg.channels
    out = cfg.num_classes * models.VOTE_GROUP

    def two_fc_head(flat):
        # flatten DO FC(flat, hidden) P DO FC(hidden, out) P (CIFAR-10 has no second dropout).
        return [
            layer.Flatten(step_mode=sm),
            layer.Dropout(cfg.dropout, step_mode=sm),
            fc(flat, cfg.hidden),
            spiking(),
            layer.Dropout(cfg.dropout, step_mode=sm),
            fc(cfg.hidden, out),
            spiking(),
        ]

    net = nn.Module()
    if cfg.is_static:
        size = cfg.input_size // 4
        # Runs once per forward on [B, C, H, W], outside the time loop, in both step modes.
        net.static_conv = nn.Sequential(
            nn.Conv2d(cfg.in_channels, c, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(c),
        )
        if name == "cifar10":
            body = [spiking()]
            for block in (2, 3):
                for _ in range(block):
                    body += [conv(c, c), bn(c), spiking()]
                body.append(pool())
            head = [
                layer.Flatten(step_mode=sm),
                layer.Dropout(cfg.dropout, step_mode=sm),
                fc(c * size * size, cfg.hidden),
                spiking(),
                fc(cfg.hidden, out),
                spiking(),
            ]
        else:
            body = [spiking(), pool(), conv(c, c), bn(c), spiking(), pool()]
            head = two_fc_head(c * size * size)
    else:
        size = cfg.input_size >> cfg.number_layer
        body = []
        for k in range(cfg.number_layer):
            body += [conv(cfg.in_channels if k == 0 else c, c), bn(c), spiking(), pool()]
        head = two_fc_head(c * size * size)
    net.conv = nn.Sequential(*body)
    net.fc = nn.Sequential(*head)
    net.boost = nn.AvgPool1d(models.VOTE_GROUP, models.VOTE_GROUP)
    net.name = name
    net.T = cfg.T
    net.step_mode = sm
    net.is_static = cfg.is_static
    return net


def spiking_modules(net) -> list:
    """The spiking neurons of ``net`` in depth order (matching plif_jax's ``sn0, sn1, ...``)."""
    _, _, _, neuron, _ = _sj()
    return [m for m in net.modules() if isinstance(m, neuron.BaseNode)]


def dropout_modules(net) -> list:
    """The time-shared dropout layers of ``net`` in depth order (``dropout0``, ...)."""
    _, _, layer, _, _ = _sj()
    return [m for m in net.modules() if isinstance(m, layer.Dropout)]


def sj_forward(
    net,
    x,
    *,
    T: int | None = None,
    dropout_masks: Sequence[Any] | None = None,
    record: bool = False,
):
    """Runs the SpikingJelly net over all time steps; returns the spike count per class.

    The net's state is reset before (and after) the call, as the paper's loop does per batch.

    Args:
      net: from :func:`build_sj_model`.
      x: static nets ``[B, C, H, W]``; neuromorphic nets time-major ``[T, B, 2, H, W]`` (the
        same layout as plif_jax; the original code permuted ``[B, T, ...]`` to this).
      T: time steps for static nets (default ``net.T``).
      dropout_masks: optional ``[B, features]`` masks, one per dropout layer in depth order,
        used instead of drawing new ones (to feed both implementations the same mask).
      record: also return the spikes of every spiking layer, ``[T, B, ...]`` (NCHW), in depth
        order.

    Returns:
      ``counts`` ``[B, num_classes]`` (and the list of spike tensors with ``record``).
    """
    torch, functional, _, _, _ = _sj()
    functional.reset_net(net)
    if dropout_masks is not None:
        drops = dropout_modules(net)
        if len(dropout_masks) != len(drops):
            raise ValueError(f"{len(drops)} dropout masks needed, got {len(dropout_masks)}")
        for module, mask in zip(drops, dropout_masks, strict=True):
            module.mask = mask
    recorded: list[list] = []
    hooks = []
    if record:
        for module in spiking_modules(net):
            store: list = []
            recorded.append(store)
            hooks.append(module.register_forward_hook(lambda m, i, o, s=store: s.append(o)))

    def readout(spikes):  # [N, classes*10] -> [N, classes]
        return net.boost(spikes.unsqueeze(1)).squeeze(1)

    try:
        if net.is_static:
            steps = net.T if T is None else T
            encoded = net.static_conv(x)
            if net.step_mode == "s":
                counts = sum(readout(net.fc(net.conv(encoded))) for _ in range(steps))
            else:
                x_seq = encoded.unsqueeze(0).repeat(steps, *([1] * encoded.ndim))
                out = net.fc(net.conv(x_seq))  # [T, B, classes*10]
                counts = readout(out.flatten(0, 1)).reshape(steps, out.shape[1], -1).sum(0)
        elif net.step_mode == "s":
            counts = sum(readout(net.fc(net.conv(x[t]))) for t in range(x.shape[0]))
        else:
            out = net.fc(net.conv(x))
            counts = readout(out.flatten(0, 1)).reshape(x.shape[0], out.shape[1], -1).sum(0)
    finally:
        for hook in hooks:
            hook.remove()
        functional.reset_net(net)
    if not record:
        return counts
    if net.step_mode == "s":
        spikes = [torch.stack(store) for store in recorded]
    else:
        spikes = [store[0] for store in recorded]
    return counts, spikes
