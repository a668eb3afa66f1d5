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
    remat_chunk=None,
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
    remat_chunk: int | None = None

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
    chunk = opts["remat_chunk"]
    if chunk is not None:
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(
                f"remat_chunk must be a positive int (time steps per rematerialised chunk) or "
                f"None (no rematerialisation), got {chunk!r}"
            )
        if opts["bn_mode"] != "per_step":
            raise ValueError(
                f"remat_chunk={chunk} needs bn_mode='per_step': with bn_mode="
                f"{opts['bn_mode']!r} the BatchNorm statistics span all T steps, so a chunk of "
                "time steps cannot be normalised on its own; use bn_mode='per_step' (the "
                "paper's) or remat_chunk=None"
            )
        if opts["T"] is not None:
            _check_chunk_divides(chunk, opts["T"])
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
        remat_chunk=chunk,
    )


def _check_chunk_divides(chunk: int, t: int) -> None:
    if t % chunk:
        divisors = [d for d in range(1, t + 1) if t % d == 0]
        raise ValueError(
            f"remat_chunk={chunk} does not divide the number of time steps T={t}; use a "
            f"divisor of T ({divisors}) or remat_chunk=None"
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

        Raises:
          ValueError: a bad input shape, or (with ``remat_chunk``) a T it does not divide.
        """
        x, t = self._input_to_folded(x)
        if self.config.remat_chunk is None:
            out_seq, traces = self._forward(x, t, return_traces)
        else:
            out_seq, traces = self._forward_chunked(x, t, return_traces)
        # float32 for float32/bf16 compute (spike counts are small integers / 10, exact there).
        out_dtype = jnp.promote_types(jnp.float32, self.config.dtype)
        counts = jnp.sum(layers.vote(out_seq.astype(out_dtype), VOTE_GROUP), axis=0)
        if return_traces:
            return counts, traces
        return counts

    def _forward(
        self, x: Array, t: int, return_traces: bool
    ) -> tuple[Array, dict[str, LayerTrace]]:
        """Every layer on all T steps at once: the output spikes ``[T, B, N]`` (and traces)."""
        traces: dict[str, LayerTrace] = {}
        for op in self.plan:
            kind = op[0]
            if kind == "conv":
                x = getattr(self, op[1])(x)
            elif kind == "bn":
                x = getattr(self, op[1])(x, time_steps=t)
            elif kind == "repeat":
                t = self.T
                x = layers.repeat_time(x, t).reshape(t * x.shape[0], *x.shape[1:])
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
        return x.reshape(t, x.shape[0] // t, x.shape[-1]), traces

    def _state_shapes(self, ops: tuple[tuple[str, ...], ...], batch: int) -> dict[str, tuple]:
        """Shape of each neuron's membrane ``[B, ...]`` and each dropout mask ``[B, F]`` in ops."""
        cfg = self.config
        size = cfg.input_size
        channels = cfg.channels if self.is_static else cfg.in_channels
        features = None
        shapes: dict[str, tuple] = {}
        for op in ops:
            kind = op[0]
            if kind == "conv":
                channels = cfg.channels
            elif kind == "pool":
                size //= 2
            elif kind == "flatten":
                features = channels * size * size
            elif kind == "fc":
                features = getattr(self, op[1]).out_features
            elif kind == "sn":
                shapes[op[1]] = (
                    (batch, size, size, channels) if features is None else (batch, features)
                )
            elif kind == "dropout":
                shapes[op[1]] = (batch, features)
        return shapes

    def _forward_chunked(
        self, x: Array, t: int, return_traces: bool
    ) -> tuple[Array, dict[str, LayerTrace]]:
        """The rematerialised forward (``remat_chunk=L``): same results as :meth:`_forward`.

        The layers from the first time-dependent one to the last neuron run as a ``lax.scan``
        over ``T / L`` chunks of ``L`` time steps, the chunk under ``jax.checkpoint``: the
        forward keeps only the carries between chunks (each neuron's membrane, the BatchNorm
        running statistics) and the backward recomputes one chunk at a time, so the activation
        memory is that of ``L`` steps instead of ``T``. Exact for ``bn_mode='per_step'``, whose
        statistics are per time step. Dropout masks are drawn before the scan (one per call, in
        the order of the default path) and shared by every chunk.
        """
        cfg = self.config
        chunk = cfg.remat_chunk
        plan = self.plan
        encoded = None
        if self.is_static:
            # The encoder (conv0 + bn0) sees the image once; each chunk repeats it L times.
            start = plan.index(("repeat",)) + 1
            for op in plan[: start - 1]:
                if op[0] == "conv":
                    x = getattr(self, op[1])(x)
                else:
                    x = getattr(self, op[1])(x, time_steps=1)
            t = self.T
            encoded, batch = x, x.shape[0]
            xs = None
        else:
            start = 0
            batch = x.shape[0] // t
        _check_chunk_divides(chunk, t)
        n_chunks = t // chunk
        if encoded is None:
            xs = x.reshape(n_chunks, chunk * batch, *x.shape[1:])
        ops = plan[start:]
        shapes = self._state_shapes(ops, batch)

        masks: dict[str, Array | None] = {}
        v0: dict[str, Array] = {}
        stats0: dict[str, tuple[Array, Array]] = {}
        stat_dtype = jnp.promote_types(cfg.dtype, jnp.float32)
        for op in ops:
            if op[0] == "dropout":
                drop = getattr(self, op[1])
                off = drop.deterministic or drop.rate == 0.0
                masks[op[1]] = None if off else drop.make_mask(*shapes[op[1]], cfg.dtype)
            elif op[0] == "sn":
                v0[op[1]] = jnp.full(shapes[op[1]], getattr(self, op[1]).v_reset, cfg.dtype)
            elif op[0] == "bn" and not getattr(self, op[1]).use_running_average:
                bn = getattr(self, op[1])
                # Carried at statistics precision; cast to the parameter dtype once at the end.
                stats0[op[1]] = (bn.mean[...].astype(stat_dtype), bn.var[...].astype(stat_dtype))
        capturing = {
            op[1]: hasattr(getattr(self, op[1]), "__captures__") for op in ops if op[0] == "sn"
        }

        def run_chunk(carry, x_in):
            v_carry, stats = dict(carry[0]), dict(carry[1])
            if encoded is None:
                x = x_in
            else:
                x = layers.repeat_time(encoded, chunk)
                x = x.reshape(chunk * batch, *encoded.shape[1:])
            rates: dict[str, Array] = {}
            chunk_traces: dict[str, LayerTrace] = {}
            for op in ops:
                kind = op[0]
                if kind == "conv":
                    # Same values as the module call; a backward XLA:CPU runs fast in a loop.
                    x = layers.apply_conv3x3_in_loop(getattr(self, op[1]), x)
                elif kind == "bn":
                    x, new_stats = getattr(self, op[1]).normalize(
                        x, time_steps=chunk, running=stats.get(op[1])
                    )
                    if new_stats is not None:
                        stats[op[1]] = new_stats
                elif kind == "sn":
                    x_seq = x.reshape(chunk, batch, *x.shape[1:])
                    # dynamics, not __call__: the call sows the firing rate under nnx.capture,
                    # and a write inside the scan body would leak the body's tracers (the rate
                    # of all T steps is sown after the scan).
                    out = getattr(self, op[1]).dynamics(
                        x_seq,
                        v_init=v_carry[op[1]],
                        return_final=True,
                        return_membrane=return_traces,
                    )
                    spikes, v_carry[op[1]] = out[0], out[-1]
                    if return_traces:
                        chunk_traces[op[1]] = LayerTrace(x_seq, spikes, out[1].h, out[1].v)
                    if capturing[op[1]]:
                        rates[op[1]] = neurons_lib.firing_rate(spikes)
                    x = spikes.reshape(x.shape)
                elif kind == "pool":
                    x = layers.pool2x2(x, cfg.pooling)
                elif kind == "flatten":
                    x = x.reshape(x.shape[0], -1)
                elif kind == "dropout":
                    if masks[op[1]] is not None:
                        x = (x.reshape(chunk, batch, -1) * masks[op[1]]).reshape(x.shape)
                elif kind == "fc":
                    x = getattr(self, op[1])(x)
            out = x.reshape(chunk, batch, x.shape[-1])
            return (v_carry, stats), (out, rates, chunk_traces)

        body = jax.checkpoint(run_chunk, prevent_cse=REMAT_PREVENT_CSE)
        (_, stats), (out, rates, chunk_traces) = jax.lax.scan(
            body, (v0, stats0), xs, length=n_chunks
        )
        for name, (mean, var) in stats.items():
            bn = getattr(self, name)
            bn.mean[...] = mean.astype(bn.mean[...].dtype)
            bn.var[...] = var.astype(bn.var[...].dtype)
        for name, rate in rates.items():
            # What the neuron sows itself on the default path: its firing rate per step, [T].
            getattr(self, name).sow(nnx.Intermediate, "firing_rate", rate.reshape(t))
        merge = lambda a: a.reshape(t, *a.shape[2:])  # [T/L, L, ...] -> [T, ...]
        traces = {name: LayerTrace(*map(merge, tr)) for name, tr in chunk_traces.items()}
        return merge(out), traces


# jax.checkpoint's prevent_cse: inside lax.scan the loop already keeps XLA from merging the
# recomputation with the forward (JAX's advice for checkpoint under scan). Measured on DVS128
# Gesture T=20 B=2: same memory plan and step time within noise either way. Saving the conv
# outputs (a save_only_these_names policy) did not shorten the step either: the recomputed
# forward's cost is mostly elementwise (BatchNorm, the neuron loop), not convolutions.
REMAT_PREVENT_CSE = False


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
