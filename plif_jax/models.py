"""The six networks of the paper (``codes/models.py`` of the original repository), in Flax NNX.

Every network is a :class:`SpikingNet`: a fixed sequence of layers (its ``plan``) executed on
time-folded tensors ``[T*B, H, W, C]``; only the spiking neurons run over time
(``jax.lax.scan`` inside ``plif_jax.neurons``). Architectures (``spec/plif_reference.md`` §3;
``C`` = 3x3 conv without bias, ``BN``, ``SN`` = PLIF/LIF, ``P`` = 2x2 pool, ``DO`` = time-shared
dropout, ``FC`` = linear without bias)::

    mnist / fashion_mnist  C(1,128) BN | x T | SN P C BN SN P |
                           DO FC(6272,2048) SN DO FC(2048,100) SN
    cifar10                C(3,256) BN | x T | SN (C BN SN)x2 P (C BN SN)x3 P |
                           DO FC(16384,2048) SN FC(2048,100) SN
    nmnist / cifar10dvs /  (C BN SN P) x number_layer | DO FC(c*h*w, c*h*w/4) SN DO FC(., 10*K) SN
    dvsgesture

The static nets compute the encoder ``C BN`` once per forward and feed the same tensor at each of
the ``T`` steps. The output is the voting readout (mean of each group of 10 output neurons)
summed over time: the spike count per class, ``[B, num_classes]``.

Attribute names (checkpoints, TensorBoard tags, analysis): ``conv0..``, ``bn0..`` (the static
encoder is ``conv0``/``bn0``), ``sn0..sn{L-1}`` (spiking layers in depth order), ``fc0``,
``fc1``, ``dropout0``, ``dropout1``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax import layers
from plif_jax import neurons as neurons_lib
from plif_jax import surrogate as surrogate_lib

Array = jax.Array

STATIC_NETS = ("mnist", "fashion_mnist", "cifar10")
NEUROMORPHIC_NETS = ("nmnist", "cifar10dvs", "dvsgesture")
MODEL_NAMES = STATIC_NETS + NEUROMORPHIC_NETS
NEURONS = ("plif", "lif")
INPUT_LAYOUTS = ("NCHW", "NHWC")

# Paper defaults per network (spec §3); `hidden=None` means "derived from the architecture".
_DEFAULTS: dict[str, dict[str, Any]] = {
    "mnist": dict(channels=128, in_channels=1, input_size=28, num_classes=10, T=8, hidden=2048),
    "fashion_mnist": dict(
        channels=128, in_channels=1, input_size=28, num_classes=10, T=8, hidden=2048
    ),
    "cifar10": dict(channels=256, in_channels=3, input_size=32, num_classes=10, T=8, hidden=2048),
    "nmnist": dict(channels=128, number_layer=2, in_channels=2, input_size=34, num_classes=10),
    "cifar10dvs": dict(channels=128, number_layer=4, in_channels=2, input_size=128, num_classes=10),
    "dvsgesture": dict(channels=128, number_layer=5, in_channels=2, input_size=128, num_classes=11),
}

_COMMON_DEFAULTS: dict[str, Any] = dict(
    channels=None,
    number_layer=None,
    pooling="max",
    neuron="plif",
    init_tau=2.0,
    detach_reset=True,
    surrogate="atan",
    surrogate_alpha=None,
    alpha_learnable=False,
    bn_mode="per_step",
    dropout=0.5,
    T=None,
    hidden=None,
    input_layout="NCHW",
    num_classes=None,
    input_size=None,
    in_channels=None,
    dtype=jnp.float32,
)
MODEL_OPTIONS = tuple(_COMMON_DEFAULTS)
"""Every keyword option :func:`create_model` accepts."""

VOTE_GROUP = 10


class LayerTrace(NamedTuple):
    """What one spiking layer saw and did in a forward pass, each ``[T, B, ...]`` (NHWC).

    ``current``: the input current ``X[t]``; ``spikes``: ``S[t]``; ``h``: the membrane after
    charging (compared with the threshold); ``v``: the membrane after the reset.
    """

    current: Array
    spikes: Array
    h: Array
    v: Array


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """The resolved options of a network (defaults filled in, validated)."""

    name: str
    channels: int
    number_layer: int | None
    pooling: str
    neuron: str
    init_tau: float
    detach_reset: bool
    surrogate: str
    surrogate_alpha: float | None
    alpha_learnable: bool
    bn_mode: str
    dropout: float
    T: int | None
    hidden: int
    input_layout: str
    num_classes: int
    input_size: int
    in_channels: int
    dtype: Any

    @property
    def is_static(self) -> bool:
        return self.name in STATIC_NETS


def _check_choice(option: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {option} {value!r}; valid values: {list(valid)}")


def _check_positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{option} must be a positive int, got {value!r}")
    return value


def resolve_options(name: str, **options: Any) -> NetConfig:
    """Fills in the paper defaults for ``name`` and validates every option (see create_model)."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r}; valid names: {list(MODEL_NAMES)}")
    unknown = sorted(set(options) - set(_COMMON_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for create_model; valid options: {sorted(MODEL_OPTIONS)}"
        )
    opts = dict(_COMMON_DEFAULTS)
    opts.update({k: v for k, v in _DEFAULTS[name].items() if k != "hidden"})
    # Explicit None keeps the default, so a config can pass every field uniformly.
    opts.update({k: v for k, v in options.items() if v is not None})
    static = name in STATIC_NETS

    _check_choice("pooling", opts["pooling"], layers.POOLINGS)
    _check_choice("neuron", opts["neuron"], NEURONS)
    _check_choice("bn_mode", opts["bn_mode"], layers.BN_MODES)
    _check_choice("surrogate", opts["surrogate"], tuple(surrogate_lib.SPIKE_FUNCTIONS))
    _check_choice("input_layout", opts["input_layout"], INPUT_LAYOUTS)
    for key in ("channels", "num_classes", "input_size", "in_channels"):
        _check_positive_int(key, opts[key])
    if static:
        if options.get("number_layer") is not None:
            raise ValueError(
                f"number_layer applies to the neuromorphic nets {list(NEUROMORPHIC_NETS)}, not "
                f"{name!r} (its depth is fixed by the paper); drop the option"
            )
        if opts["T"] is None:
            raise ValueError(f"T must be a positive int for {name!r}, got None")
    else:
        _check_positive_int("number_layer", opts["number_layer"])
    if opts["T"] is not None:
        _check_positive_int("T", opts["T"])
    if not 0.0 <= float(opts["dropout"]) < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {opts['dropout']!r}")
    if float(opts["init_tau"]) <= 1.0:
        raise ValueError(f"init_tau must be > 1 (the paper uses 2.0), got {opts['init_tau']!r}")
    if opts["surrogate_alpha"] is not None and not float(opts["surrogate_alpha"]) > 0:
        raise ValueError(f"surrogate_alpha must be > 0, got {opts['surrogate_alpha']!r}")

    spatial = _final_spatial_size(name, opts["input_size"], opts["number_layer"])
    if spatial < 1:
        n_pool = 2 if static else opts["number_layer"]
        raise ValueError(
            f"input_size {opts['input_size']} is too small for {n_pool} 2x2 poolings of "
            f"{name!r}; use input_size >= {2**n_pool}"
        )
    if opts["hidden"] is None:
        if static:
            opts["hidden"] = _DEFAULTS[name]["hidden"]
        else:  # c*h*w // 4 (create_2fc)
            opts["hidden"] = opts["channels"] * spatial * spatial // 4
            if opts["hidden"] < 1:
                raise ValueError(
                    f"the hidden FC width channels*h*w//4 = {opts['channels']}*{spatial}*"
                    f"{spatial}//4 is 0 for {name!r}; pass hidden=<width> or more channels"
                )
    _check_positive_int("hidden", opts["hidden"])
    return NetConfig(
        name=name,
        channels=opts["channels"],
        number_layer=None if static else opts["number_layer"],
        pooling=opts["pooling"],
        neuron=opts["neuron"],
        init_tau=float(opts["init_tau"]),
        detach_reset=bool(opts["detach_reset"]),
        surrogate=opts["surrogate"],
        surrogate_alpha=None if opts["surrogate_alpha"] is None else float(opts["surrogate_alpha"]),
        alpha_learnable=bool(opts["alpha_learnable"]),
        bn_mode=opts["bn_mode"],
        dropout=float(opts["dropout"]),
        T=opts["T"],
        hidden=opts["hidden"],
        input_layout=opts["input_layout"],
        num_classes=opts["num_classes"],
        input_size=opts["input_size"],
        in_channels=opts["in_channels"],
        dtype=jnp.dtype(opts["dtype"]),
    )


def _final_spatial_size(name: str, input_size: int, number_layer: int | None) -> int:
    n_pool = 2 if name in STATIC_NETS else number_layer
    size = input_size
    for _ in range(n_pool):
        size //= 2
    return size


def build_plan(cfg: NetConfig) -> tuple[tuple[str, ...], ...]:
    """The layer sequence of a network: ``(op, attribute_name)`` pairs (``op`` alone for pools).

    Ops: ``conv``, ``bn``, ``repeat`` (static nets: the encoder output is fed at each of the T
    steps), ``sn``, ``pool``, ``flatten``, ``dropout``, ``fc``. The order is the order of the
    original ``nn.Sequential`` layers, which :mod:`plif_jax.porting` relies on.
    """
    plan: list[tuple[str, ...]] = []
    n_conv = 0
    n_sn = 0

    def conv_bn():
        nonlocal n_conv
        plan.extend([("conv", f"conv{n_conv}"), ("bn", f"bn{n_conv}")])
        n_conv += 1

    def sn():
        nonlocal n_sn
        plan.append(("sn", f"sn{n_sn}"))
        n_sn += 1

    if cfg.name in ("mnist", "fashion_mnist"):
        conv_bn()
        plan.append(("repeat",))
        sn()
        plan.append(("pool",))
        conv_bn()
        sn()
        plan.append(("pool",))
        plan.extend([("flatten",), ("dropout", "dropout0"), ("fc", "fc0")])
        sn()
        plan.extend([("dropout", "dropout1"), ("fc", "fc1")])
        sn()
    elif cfg.name == "cifar10":
        conv_bn()
        plan.append(("repeat",))
        sn()
        for block in (2, 3):
            for _ in range(block):
                conv_bn()
                sn()
            plan.append(("pool",))
        plan.extend([("flatten",), ("dropout", "dropout0"), ("fc", "fc0")])
        sn()
        plan.append(("fc", "fc1"))
        sn()
    else:
        for _ in range(cfg.number_layer):
            conv_bn()
            sn()
            plan.append(("pool",))
        plan.extend([("flatten",), ("dropout", "dropout0"), ("fc", "fc0")])
        sn()
        plan.extend([("dropout", "dropout1"), ("fc", "fc1")])
        sn()
    return tuple(plan)


class SpikingNet(nnx.Module):
    """One of the paper's networks; build it with :func:`create_model`.

    Attributes:
      config: the resolved :class:`NetConfig`.
      plan: the layer sequence (see :func:`build_plan`).
      T: number of time steps (static nets; for neuromorphic nets the expected input T, or None).
      time_steps: same as ``T``.
      num_classes: number of classes of the readout.
    """

    def __init__(self, cfg: NetConfig, *, rngs: nnx.Rngs):
        self.config = cfg
        self.name = cfg.name
        self.plan = build_plan(cfg)
        self.T = cfg.T
        self.time_steps = cfg.T
        self.num_classes = cfg.num_classes
        self.is_static = cfg.is_static
        dtype = cfg.dtype
        surrogate = surrogate_lib.get(cfg.surrogate, cfg.surrogate_alpha)

        channels = cfg.in_channels
        size = cfg.input_size
        features = None
        fc_widths = iter((cfg.hidden, cfg.num_classes * VOTE_GROUP))
        for op in self.plan:
            kind = op[0]
            if kind == "conv":
                setattr(self, op[1], layers.conv3x3(channels, cfg.channels, rngs=rngs, dtype=dtype))
                channels = cfg.channels
            elif kind == "bn":
                setattr(self, op[1], layers.BatchNorm(channels, mode=cfg.bn_mode, dtype=dtype))
            elif kind == "pool":
                size //= 2
            elif kind == "flatten":
                features = channels * size * size
            elif kind == "dropout":
                setattr(self, op[1], layers.TimeSharedDropout(cfg.dropout, rngs=rngs))
            elif kind == "fc":
                out = next(fc_widths)
                setattr(self, op[1], layers.linear(features, out, rngs=rngs, dtype=dtype))
                features = out
            elif kind == "sn":
                kwargs = dict(
                    detach_reset=cfg.detach_reset,
                    surrogate=surrogate,
                    alpha_learnable=cfg.alpha_learnable,
                )
                if cfg.neuron == "plif":
                    neuron = neurons_lib.PLIF(cfg.init_tau, **kwargs)
                else:
                    neuron = neurons_lib.LIF(cfg.init_tau, **kwargs)
                setattr(self, op[1], neuron)

    def spiking_layers(self) -> list[tuple[str, nnx.Module]]:
        """``[(name, neuron), ...]`` for every spiking layer, in depth order (``sn0``, ...)."""
        return [(op[1], getattr(self, op[1])) for op in self.plan if op[0] == "sn"]

    def _input_to_folded(self, x: Array) -> tuple[Array, int]:
        """Validates the input and returns it NHWC ``[B, H, W, C]`` (static) or ``[T*B, ...]``."""
        cfg = self.config
        want_rank = 4 if self.is_static else 5
        layout = (
            ("[B, C, H, W]" if cfg.input_layout == "NCHW" else "[B, H, W, C]")
            if self.is_static
            else ("[T, B, C, H, W]" if cfg.input_layout == "NCHW" else "[T, B, H, W, C]")
        )
        if x.ndim != want_rank:
            raise ValueError(
                f"{self.name} expects input {layout} (input_layout={cfg.input_layout!r}), got "
                f"shape {tuple(x.shape)}"
            )
        if cfg.input_layout == "NCHW":
            x = jnp.moveaxis(x, -3, -1)
        c, h, w = x.shape[-1], x.shape[-3], x.shape[-2]
        if c != cfg.in_channels:
            raise ValueError(
                f"{self.name} expects {cfg.in_channels} input channels in {layout} "
                f"(input_layout={cfg.input_layout!r}), got shape {tuple(x.shape)} with {c}; "
                f"pass input_layout='NHWC' for channels-last data"
            )
        if (h, w) != (cfg.input_size, cfg.input_size):
            raise ValueError(
                f"{self.name} was built for {cfg.input_size}x{cfg.input_size} inputs, got "
                f"{h}x{w}; create the model with input_size={h} (square inputs only)"
            )
        x = x.astype(cfg.dtype)
        if self.is_static:
            return x, 1
        t = x.shape[0]
        if self.time_steps is not None and t != self.time_steps:
            raise ValueError(
                f"{self.name} was built for T={self.time_steps} time steps, got T={t} in input "
                f"shape; create it with T={t} (or T=None to accept any)"
            )
        return x.reshape(t * x.shape[1], *x.shape[2:]), t

    def __call__(
        self, x: Array, *, return_traces: bool = False
    ) -> Array | tuple[Array, dict[str, LayerTrace]]:
        """Spike count per class summed over time.

        Args:
          x: static nets ``[B, C, H, W]`` (``[B, H, W, C]`` with ``input_layout='NHWC'``);
            neuromorphic nets ``[T, B, 2, H, W]`` (``[T, B, H, W, 2]`` with NHWC).
          return_traces: also return ``{name: LayerTrace}`` for every spiking layer.

        Returns:
          ``[B, num_classes]`` counts in ``[0, T]``, float32 (float64 for a float64 dtype);
          with ``return_traces`` also the per-layer :class:`LayerTrace` dict.
        """
        x, t = self._input_to_folded(x)
        traces: dict[str, LayerTrace] = {}
        for op in self.plan:
            kind = op[0]
            if kind == "conv":
                x = getattr(self, op[1])(x)
            elif kind == "bn":
                x = getattr(self, op[1])(x, time_steps=t)
            elif kind == "repeat":
                t = self.T
                x = jnp.broadcast_to(x[None], (t, *x.shape)).reshape(t * x.shape[0], *x.shape[1:])
            elif kind == "sn":
                x_seq = x.reshape(t, x.shape[0] // t, *x.shape[1:])
                neuron = getattr(self, op[1])
                if return_traces:
                    spikes, mem = neuron(x_seq, return_membrane=True)
                    traces[op[1]] = LayerTrace(current=x_seq, spikes=spikes, h=mem.h, v=mem.v)
                else:
                    spikes = neuron(x_seq)
                x = spikes.reshape(x.shape)
            elif kind == "pool":
                x = layers.pool2x2(x, self.config.pooling)
            elif kind == "flatten":
                x = x.reshape(x.shape[0], -1)  # NHWC order; porting permutes torch's CHW rows
            elif kind == "dropout":
                x = getattr(self, op[1])(x, time_steps=t)
            elif kind == "fc":
                x = getattr(self, op[1])(x)
        out_seq = x.reshape(t, x.shape[0] // t, x.shape[-1])
        # float32 for float32/bf16 compute (spike counts are small integers / 10, exact there).
        out_dtype = jnp.promote_types(jnp.float32, self.config.dtype)
        counts = jnp.sum(layers.vote(out_seq.astype(out_dtype), VOTE_GROUP), axis=0)
        if return_traces:
            return counts, traces
        return counts


def create_model(name: str, *, rngs: nnx.Rngs, **options: Any) -> SpikingNet:
    """Builds one of the paper's six networks.

    Args:
      name: ``mnist``, ``fashion_mnist``, ``cifar10``, ``nmnist``, ``cifar10dvs`` or
        ``dvsgesture``.
      rngs: ``nnx.Rngs``; ``params`` (or ``default``) initialises the weights, ``dropout`` (or
        ``default``) seeds the dropout streams held by the model.
      **options: keyword options, defaults = the paper (``None`` = default):
        ``channels`` (conv width; 128, CIFAR-10 256), ``number_layer`` (conv blocks, neuromorphic
        nets only: N-MNIST 2, CIFAR10-DVS 4, DVS128 Gesture 5), ``pooling`` ('max' | 'avg'),
        ``neuron`` ('plif' | 'lif'), ``init_tau`` (2.0), ``detach_reset`` (True), ``surrogate``
        ('atan' | 'sigmoid'), ``surrogate_alpha`` (None = the surrogate's default),
        ``alpha_learnable`` (False), ``bn_mode`` ('per_step' | 'folded'), ``dropout`` (0.5),
        ``T`` (static nets: time steps, 8; neuromorphic nets: expected input T or None),
        ``hidden`` (hidden FC width; static 2048, neuromorphic c*h*w/4), ``input_layout``
        ('NCHW' | 'NHWC'), ``num_classes`` (10; DVS128 Gesture 11), ``input_size`` (28, 32, 34,
        128), ``in_channels`` (1, 3, 2), ``dtype`` (compute dtype, float32).

    Returns:
      The :class:`SpikingNet`, in training mode (call ``.eval()`` for evaluation).

    Raises:
      ValueError: unknown name or option, or an invalid option value.
    """
    return SpikingNet(resolve_options(name, **options), rngs=rngs)


def count_params(model: nnx.Module) -> int:
    """Number of scalars in every ``nnx.Param`` (weights, BN affine, PLIF ``w``)."""
    return sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
