"""Stateless layers of the paper networks, run on time-folded tensors ``[T*B, ...]`` in NHWC.

Only the spiking neurons carry state over time (``plif_jax.neurons``, inside ``lax.scan``); every
layer here sees all ``T`` time steps at once with time folded into the batch axis, time-major
(rows ``t*B .. t*B + B - 1`` hold step ``t``). Layers whose result depends on the time structure
take ``time_steps=T`` so they can unfold it:

* :class:`BatchNorm` in ``'per_step'`` mode (the paper's code: BatchNorm2d called once per time
  step) normalises each step with its own batch statistics and applies ``T`` sequential running
  updates; ``'folded'`` mode (newer SpikingJelly's multi-step BN) uses one set of statistics over
  all ``T*B`` samples.
* :class:`TimeSharedDropout` draws one mask per sample and reuses it at every time step.

Train / eval follow NNX conventions: ``model.train()`` / ``model.eval()`` set
``use_running_average`` (BatchNorm) and ``deterministic`` (dropout); ``nnx.view`` works as well.

Batch-parallel steps (:mod:`plif_jax.training.sharded`) trace the network under
``jax.shard_map`` inside :func:`batch_axis`: each device holds a slice of the batch, BatchNorm's
statistics are means over every device's rows (``pmean``) and the dropout mask is the global
batch's, each device taking its own rows, so the layers compute what one device computes on the
whole batch. Outside :func:`batch_axis` (one device) nothing of this is traced.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax.ops import batch_norm, xla_cpu

Array = jax.Array

BN_MODES = ("per_step", "folded")
POOLINGS = ("max", "avg")

# PyTorch's default init for Conv2d / Linear weights is kaiming_uniform(a=sqrt(5)), i.e.
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling(1/3, fan_in, uniform) has the same bound.
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# The mesh axis the batch is split over while a batch-parallel step is traced (None: one device).
_BATCH_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("batch_axis", default=None)


@contextlib.contextmanager
def batch_axis(name: str) -> Iterator[None]:
    """Traces the block as one device's part of a batch split over the mesh axis ``name`` (the
    body of a ``jax.shard_map``): BatchNorm and dropout then see the global batch."""
    token = _BATCH_AXIS.set(name)
    try:
        yield
    finally:
        _BATCH_AXIS.reset(token)


def batch_sum(x: Array) -> Array:
    """``x`` summed over the devices the batch is split over (``x`` itself on one device)."""
    name = _BATCH_AXIS.get()
    return x if name is None else jax.lax.psum(x, name)


def batch_mean(x: Array) -> Array:
    """``x`` averaged over the devices the batch is split over (``x`` itself on one device);
    the mean over the global batch when every device holds as many rows."""
    name = _BATCH_AXIS.get()
    return x if name is None else jax.lax.pmean(x, name)


def batch_varying(x: Array) -> Array:
    """``x``, a value built the same on every device (e.g. a zero membrane), typed as a
    per-device one, as a loop carry updated from the local batch must be (``x`` on one device)."""
    name = _BATCH_AXIS.get()
    return x if name is None else jax.lax.pcast(x, (name,), to="varying")


def _batch_devices() -> int:
    name = _BATCH_AXIS.get()
    return 1 if name is None else jax.lax.axis_size(name)


def conv3x3(
    in_channels: int,
    out_channels: int,
    *,
    rngs: nnx.Rngs,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> nnx.Conv:
    """3x3 convolution, stride 1, padding 1, no bias, NHWC, PyTorch-default init."""
    return nnx.Conv(
        in_channels,
        out_channels,
        kernel_size=(3, 3),
        strides=(1, 1),
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=torch_default_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def linear(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
) -> nnx.Linear:
    """Linear layer without bias, kernel ``[in, out]``, PyTorch-default init.

    Its matmul is :func:`plif_jax.ops.xla_cpu.dense` (same values; a weight gradient that XLA:CPU
    computes without transposing the output gradient, on its fast dot).
    """
    return nnx.Linear(
        in_features,
        out_features,
        use_bias=False,
        dot_general=xla_cpu.dense_dot_general,  # the weight gradient on XLA:CPU's fast dot
        kernel_init=torch_default_init,
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def pool2x2(x: Array, kind: str = "max") -> Array:
    """2x2 max or average pooling, stride 2, VALID (floors odd sizes: 17 -> 8), NHWC.

    ``'max'`` runs :func:`plif_jax.ops.xla_cpu.max_pool2x2` (same values and gradients as
    ``nnx.max_pool``, without XLA:CPU's slow reduce_window / select_and_scatter).
    """
    if kind == "max":
        return xla_cpu.max_pool2x2(x)
    if kind == "avg":
        return nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
    raise ValueError(f"unknown pooling {kind!r}; valid values: {list(POOLINGS)}")


def vote(x: Array, group: int = 10) -> Array:
    """The voting readout: mean of each consecutive group of ``group`` neurons (last axis).

    ``[..., classes * group] -> [..., classes]``; class ``k`` averages neurons
    ``k*group .. k*group + group - 1`` (PyTorch ``AvgPool1d(group, group)``).
    """
    n = x.shape[-1]
    if n % group:
        raise ValueError(
            f"vote: the last axis ({n}) must be a multiple of the group size {group}; "
            f"the output layer needs num_classes * {group} neurons"
        )
    return jnp.mean(x.reshape(*x.shape[:-1], n // group, group), axis=-1)


def _unfold_time(x: Array, time_steps: int, who: str) -> Array:
    if time_steps < 1 or x.shape[0] % time_steps:
        raise ValueError(
            f"{who}: leading axis {x.shape[0]} is not T*B for time_steps={time_steps}; pass "
            "the time-folded tensor [T*B, ...] and the number of time steps T"
        )
    return x.reshape(time_steps, x.shape[0] // time_steps, *x.shape[1:])


class BatchNorm(nnx.Module):
    """BatchNorm over the last (channel) axis with PyTorch conventions, per time step or folded.

    Normalisation uses the biased batch variance; the running variance is updated with the
    unbiased one (``n / (n - 1)``), ``running = (1 - momentum) * running + momentum * batch``.

    Modes (training):

    * ``'per_step'`` (the paper's code): statistics of each time step over ``(B, H, W)``; the
      running statistics receive ``T`` sequential updates per call (in closed form:
      ``r_T = (1-m)^T r_0 + m * sum_t (1-m)^(T-1-t) b_t``).
    * ``'folded'``: statistics over all ``T*B`` samples, one running update per call.

    In eval (``use_running_average=True``) both modes normalise with the running statistics.

    Args:
      num_features: channels ``C`` (last axis).
      mode: ``'per_step'`` or ``'folded'``.
      momentum: PyTorch-style momentum (weight of the new batch statistic), 0.1.
      epsilon: added to the variance, 1e-5.
      use_running_average: eval behaviour when True; set by ``model.train()`` / ``model.eval()``.
      dtype: output dtype (``None``: the input's). Statistics are computed in at least float32.
      param_dtype: dtype of the scale, bias and running statistics.
    """

    def __init__(
        self,
        num_features: int,
        *,
        mode: str = "per_step",
        momentum: float = 0.1,
        epsilon: float = 1e-5,
        use_running_average: bool = False,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        if mode not in BN_MODES:
            raise ValueError(f"unknown bn_mode {mode!r}; valid values: {list(BN_MODES)}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm momentum must be in [0, 1], got {momentum}")
        self.num_features = int(num_features)
        self.mode = mode
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.use_running_average = use_running_average
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((num_features,), param_dtype))
        self.bias = nnx.Param(jnp.zeros((num_features,), param_dtype))
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))

    def set_view(self, use_running_average: bool | None = None):
        """Hook for ``nnx.view``: switches between batch and running statistics."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def __call__(self, x: Array, *, time_steps: int = 1) -> Array:
        """Normalises ``x`` ``[T*B, ..., C]``; ``time_steps`` = T (1 outside the time loop)."""
        y, running = self.normalize(x, time_steps=time_steps)
        if running is not None:
            self.mean[...], self.var[...] = running
        return y

    def normalize(
        self,
        x: Array,
        *,
        time_steps: int = 1,
        running: tuple[Array, Array] | None = None,
        fire: Callable | None = None,
    ) -> tuple[Array, tuple[Array, Array] | None]:
        """The functional form of ``__call__``: normalises without writing the running statistics.

        The time-chunked (rematerialised) forward of :mod:`plif_jax.models` carries the running
        statistics through a ``lax.scan`` and applies each chunk's updates itself; a module write
        inside the scan body would leak the body's tracers.

        Args:
          x: ``[T*B, ..., C]``.
          time_steps: T (1 outside the time loop).
          running: ``(mean, var)`` to read (eval) and update (training) in place of the
            module's own statistics; the updated ones keep their dtype.
          fire: training only: :func:`plif_jax.models.blocks.fire_after_batch_norm` of a
            neuron, which returns the neuron's spikes on the normalised ``x`` in place of it
            (one op on NVIDIA GPUs); it gets ``x`` unfolded in time and in its own dtype.

        Returns:
          ``(y, (new_mean, new_var))`` in training (gradient-stopped), ``(y, None)`` in eval.
        """
        if x.shape[-1] != self.num_features:
            raise ValueError(
                f"BatchNorm expects {self.num_features} channels on the last axis, got shape "
                f"{tuple(x.shape)}"
            )
        if running is None:
            running = (self.mean[...], self.var[...])
        out_dtype = x.dtype if self.dtype is None else self.dtype
        stat_dtype = batch_norm.stat_dtype(x)
        raw = _unfold_time(x, time_steps, "BatchNorm")  # [T, B, ..., C]
        xs = raw.astype(stat_dtype)
        scale = self.scale[...].astype(stat_dtype)
        bias = self.bias[...].astype(stat_dtype)
        if self.use_running_average:
            if fire is not None:
                raise ValueError("BatchNorm.normalize(fire=...) is for training; in eval apply "
                                 "the neuron to the normalised output")  # fmt: skip
            mean = running[0].astype(stat_dtype)
            var = running[1].astype(stat_dtype)
            y = (xs - mean) * (jax.lax.rsqrt(var + self.epsilon) * scale) + bias
            return y.reshape(x.shape).astype(out_dtype), None

        if self.mode == "per_step":
            axes = tuple(range(1, xs.ndim - 1))  # all but time and channel
            keep = (xs.shape[0],) + (1,) * (xs.ndim - 2) + (xs.shape[-1],)
        else:
            axes = tuple(range(0, xs.ndim - 1))
            keep = (1,) * (xs.ndim - 1) + (xs.shape[-1],)
        n = _batch_devices()  # the batch rows of every device
        for a in axes:
            n *= xs.shape[a]
        if n < 2:
            raise ValueError(
                f"BatchNorm in training needs more than one value per channel, got {n} "
                f"(input shape {tuple(x.shape)}, mode {self.mode!r}); use a batch size > 1"
            )
        # mean, var: [T, C] or [C] (over every device's rows when the batch is split; two-pass
        # variance on CPU, one pass on GPU/TPU, with a hand-written backward there).
        spec = dict(axes=axes, keep=keep, epsilon=self.epsilon, axis_name=_BATCH_AXIS.get())
        if fire is None:
            y, mean, var = batch_norm.normalize(xs, scale, bias, **spec)
        else:
            # The unconverted x: the op converts it where it reads it (its residual stays in
            # x's dtype, half the bytes for bfloat16).
            y, mean, var = fire(raw, scale, bias, out_dtype=out_dtype, **spec)
        new_mean, new_var = self._update_running(*running, mean, var * (n / (n - 1)))
        return y.reshape(x.shape).astype(out_dtype), (new_mean, new_var)

    def _update_running(
        self, mean: Array, var: Array, batch_mean: Array, batch_var_unbiased: Array
    ) -> tuple[Array, Array]:
        """The running statistics after this call's update(s), gradient-stopped, in their dtype."""
        m = self.momentum
        if self.mode == "per_step":
            t = batch_mean.shape[0]
            # Weight of step t's statistic after all T updates: m * (1-m)^(T-1-t).
            w = m * (1.0 - m) ** jnp.arange(t - 1, -1, -1, dtype=batch_mean.dtype)
            keep_old = (1.0 - m) ** t
            new_mean = keep_old * mean + jnp.tensordot(w, batch_mean, axes=1)
            new_var = keep_old * var + jnp.tensordot(w, batch_var_unbiased, axes=1)
        else:
            new_mean = (1.0 - m) * mean + m * batch_mean
            new_var = (1.0 - m) * var + m * batch_var_unbiased
        batch_stop = jax.lax.stop_gradient
        return (
            batch_stop(new_mean).astype(mean.dtype),
            batch_stop(new_var).astype(var.dtype),
        )


class TimeSharedDropout(nnx.Module):
    """Dropout whose mask is drawn once per sample and reused at every time step.

    The mask is ``[B, features]`` with values ``0`` (probability ``rate``) or ``1 / (1 - rate)``,
    as SpikingJelly's ``layer.Dropout``. Identity when ``deterministic`` (eval) or ``rate == 0``.
    The keys come from the module's own fork of the ``'dropout'`` stream of the ``nnx.Rngs``
    given at construction, so the stream is part of the model state (checkpointable).

    Args:
      rate: probability of zeroing an element, in ``[0, 1)``.
      rngs: the model's ``nnx.Rngs``; its ``'dropout'`` stream (or ``'default'``) is forked.
      deterministic: eval behaviour when True; set by ``model.train()`` / ``model.eval()``.
    """

    def __init__(self, rate: float, *, rngs: nnx.Rngs, deterministic: bool = False):
        rate = float(rate)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.deterministic = deterministic
        try:
            stream = rngs["dropout"]
        except KeyError as err:
            raise ValueError(
                "TimeSharedDropout needs an nnx.Rngs with a 'dropout' (or 'default') stream, "
                "e.g. nnx.Rngs(params=0, dropout=1) or nnx.Rngs(0)"
            ) from err
        self.rngs = stream.fork()

    def set_view(self, deterministic: bool | None = None):
        """Hook for ``nnx.view``: switches dropout off (True) or on (False)."""
        if deterministic is not None:
            self.deterministic = deterministic

    def make_mask(self, batch: int, features: int, dtype: Any = jnp.float32) -> Array:
        """Draws the next mask ``[batch, features]`` from the module's stream (advances it).

        Batch-parallel (:func:`batch_axis`): ``batch`` is this device's rows; the mask is the
        global batch's (the stream is the same on every device), sliced to this device's rows.
        """
        name = _BATCH_AXIS.get()
        rows = batch * _batch_devices()
        keep = jax.random.bernoulli(self.rngs(), 1.0 - self.rate, (rows, features))
        mask = jnp.where(keep, 1.0 / (1.0 - self.rate), 0.0).astype(dtype)
        if name is None:
            return mask
        return jax.lax.dynamic_slice_in_dim(mask, jax.lax.axis_index(name) * batch, batch)

    def __call__(self, x: Array, *, time_steps: int = 1) -> Array:
        """Masks ``x`` ``[T*B, features]`` with one ``[B, features]`` mask shared over T."""
        if self.deterministic or self.rate == 0.0:
            return x
        if x.ndim != 2:
            raise ValueError(
                f"TimeSharedDropout expects [T*B, features], got shape {tuple(x.shape)}"
            )
        xs = _unfold_time(x, time_steps, "TimeSharedDropout")
        mask = self.make_mask(xs.shape[1], xs.shape[2], x.dtype)
        return (xs * mask).reshape(x.shape)
