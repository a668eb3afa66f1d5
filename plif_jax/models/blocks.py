"""The blocks the paper's networks are built from (the layers of ``codes/models.py``).

* :class:`ConvBN`: 3x3 convolution without bias, then BatchNorm (the synapse of a conv layer).
* :class:`SpikingBlock`: an optional :class:`ConvBN`, a spiking neuron (LIF / PLIF), an optional
  2x2 pooling: ``Conv BN PLIF MaxPool`` in the paper's notation.
* :class:`SpikingFC`: optional time-shared dropout, a linear layer without bias, a neuron.

Every block runs on time-folded tensors ``[t*B, ...]`` (NHWC) and is a function of an explicit
``carry`` for the state that crosses time: the neuron's membrane (``None``: the sequence starts
here, at ``V_reset``), the BatchNorm running statistics, the dropout mask. The network calls
its blocks once on all ``T`` steps, or, rematerialised (``remat_chunk``), the same calls inside
a ``lax.scan`` over chunks of time steps (:mod:`plif_jax.models.nets`). Nothing is written into
the modules inside a block call; the network writes the new BatchNorm statistics back.

A block call ``block(x, t, carry) -> (x, carry, tap)`` also returns a ``tap``: what its neuron
saw and did (``spikes``; in a view with ``record='traces'`` also ``current``, ``h``, ``v``) and
the input of its synaptic layer (``synapse_input``, for synaptic-operation counts); the network
sows them (``nnx.sow``). Two ``nnx.view`` flags change what a call does, never its signature:
``record`` (the blocks' ``set_view``) and ``in_scan`` (:class:`ConvBN`'s).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax import layers, neurons
from plif_jax.ops import bn_lif, xla_cpu

Array = jax.Array
Carry = dict[str, Any]


def _unfold(x: Array, t: int) -> Array:
    return x.reshape(t, x.shape[0] // t, *x.shape[1:])


def fire(
    neuron: nnx.Module, x: Array, t: int, v: Array | None, traces: bool
) -> tuple[Array, Array | None, dict[str, Array]]:
    """The neuron on ``x`` ``[t*B, ...]``: ``(spikes [t*B, ...], v_final or None, tap)``.

    ``v`` None: the sequence starts at ``V_reset`` (one call on all T steps); otherwise the
    membrane carried from the previous chunk, and the final membrane is returned. ``traces``:
    the tap also holds the input current and the membrane.
    """
    x_seq = _unfold(x, t)
    if v is None:
        out = neuron.dynamics(x_seq, return_membrane=traces)
        v_final = None
    else:
        out = neuron.dynamics(x_seq, v_init=v, return_final=True, return_membrane=traces)
        v_final = out[-1]
    spikes = out[0] if (traces or v is not None) else out
    tap = {"spikes": spikes}
    if traces:
        tap.update(current=x_seq, h=out[1].h, v=out[1].v)
    return spikes.reshape(x.shape), v_final, tap


def fire_after_batch_norm(neuron: nnx.Module):
    """The ``fire`` of :meth:`plif_jax.layers.BatchNorm.normalize` for ``neuron``:
    ``(xs, scale, bias, *, out_dtype, axes, keep, epsilon, axis_name) -> (spikes, mean, var)``,
    the neuron on BatchNorm's training output of ``xs`` from ``V_reset``
    (:func:`plif_jax.ops.bn_lif.bn_lif`: one op with Pallas kernels on NVIDIA GPUs)."""

    def fire_bn(xs, scale, bias, *, out_dtype, **spec):
        a = neuron.surrogate.alpha if neuron.alpha is None else neuron.alpha[...]
        settings = bn_lif.Settings(
            **spec, v_threshold=neuron.v_threshold, v_reset=neuron.v_reset,
            detach_reset=neuron.detach_reset, surrogate=neuron.surrogate,
            out_dtype=jnp.dtype(out_dtype), unroll=int(neuron.unroll),
            learn_alpha=neuron.alpha is not None,
        )  # fmt: skip
        decay, alpha, v0 = (
            neurons.varying_as(v, xs)
            for v in (
                jnp.asarray(neuron.decay(), out_dtype),
                jnp.asarray(a, out_dtype),
                jnp.full(xs.shape[1:], neuron.v_reset, out_dtype),
            )
        )
        return bn_lif.bn_lif(xs, scale, bias, decay, alpha, v0, settings)

    return fire_bn


class ConvBN(nnx.Module):
    """``Conv2d(c_in, c_out, 3, padding=1, bias=False)`` then ``BatchNorm2d(c_out)``."""

    def __init__(
        self, c_in: int, c_out: int, *, bn_mode: str, dtype: Any, rngs: nnx.Rngs,
        in_scan: bool = False,
    ):  # fmt: skip
        self.conv = layers.conv3x3(c_in, c_out, rngs=rngs, dtype=dtype)
        self.bn = layers.BatchNorm(c_out, mode=bn_mode, dtype=dtype)
        self.in_scan = bool(in_scan)

    def set_view(self, in_scan: bool | None = None):
        """Hook for ``nnx.view``: the form of the convolution.

        Args:
          in_scan: True runs the convolution with a backward that XLA:CPU runs fast inside a
            loop body (same forward); a network with ``remat_chunk`` builds the convolutions of
            its scanned body so.
        """
        if in_scan is not None:
            self.in_scan = bool(in_scan)

    def __call__(
        self, x: Array, t: int, stats: tuple[Array, Array], fire: Any = None
    ) -> tuple[Array, tuple[Array, Array]]:
        """``(BN(conv(x)), new running statistics)``; ``stats`` = the running (mean, var);
        ``fire``: :func:`fire_after_batch_norm` of a neuron (training): its spikes in place of BN's
        output (:meth:`plif_jax.layers.BatchNorm.normalize`)."""
        x = xla_cpu.apply_conv3x3_in_loop(self.conv, x) if self.in_scan else self.conv(x)
        y, new = self.bn.normalize(x, time_steps=t, running=stats, fire=fire)
        return y, (stats if new is None else new)

    def initial_stats(self, dtype: Any = None) -> tuple[Array, Array]:
        mean, var = self.bn.mean[...], self.bn.var[...]
        return (mean, var) if dtype is None else (mean.astype(dtype), var.astype(dtype))

    def write_stats(self, stats: tuple[Array, Array]) -> None:
        if not self.bn.use_running_average:
            self.bn.mean[...] = stats[0].astype(self.bn.mean[...].dtype)
            self.bn.var[...] = stats[1].astype(self.bn.var[...].dtype)


class _Tapped(nnx.Module):
    """The ``record`` view of a block: what its tap holds."""

    record: str | None = None

    def set_view(self, record: str | bool | None = None):
        """Hook for ``nnx.view``: what the block's tap holds.

        Args:
          record: ``'traces'`` adds the neuron's input current and membrane to the tap;
            ``'rates'`` or ``False``: the spikes and the synapse input only.
        """
        if record is not None:
            self.record = neurons.record_mode(record)


class SpikingBlock(_Tapped):
    """``[Conv BN] -> LIF/PLIF -> [2x2 pool]``; ``synapse=None`` for the static nets' first
    neuron, which fires on the encoder's output."""

    def __init__(self, synapse: ConvBN | None, neuron: nnx.Module, pooling: str | None):
        self.synapse = synapse
        self.neuron = neuron
        self.pooling = pooling
        self.has_synapse = synapse is not None

    def initial_carry(self, shape: tuple[int, ...] | None, dtype: Any, stat_dtype: Any) -> Carry:
        """``shape`` ``[B, ...]`` of the membrane for a chunked run, ``None`` for a whole one."""
        v = (
            None
            if shape is None
            else layers.batch_varying(jnp.full(shape, self.neuron.v_reset, dtype))
        )
        stats = None if self.synapse is None else self.synapse.initial_stats(stat_dtype)
        return {"v": v, "stats": stats}

    def __call__(self, x: Array, t: int, carry: Carry) -> tuple[Array, Carry, dict[str, Array]]:
        tap = {"synapse_input": x}
        stats = carry["stats"]
        if self._fires_in_synapse(carry):
            # BatchNorm and the neuron as one op (plif_jax.ops.bn_lif: kernels on NVIDIA GPUs).
            x, stats = self.synapse(x, t, stats, fire=fire_after_batch_norm(self.neuron))
            v, fired = None, {"spikes": _unfold(x, t)}
        else:
            if self.synapse is not None:
                x, stats = self.synapse(x, t, stats)
            x, v, fired = fire(self.neuron, x, t, carry["v"], self.record == "traces")
        tap.update(fired)
        if self.pooling is not None:
            x = layers.pool2x2(x, self.pooling)
        return x, {"v": v, "stats": stats}, tap

    def _fires_in_synapse(self, carry: Carry) -> bool:
        """Training on a whole sequence from ``V_reset`` with no membrane trace asked for."""
        return (
            self.synapse is not None
            and carry["v"] is None
            and self.record != "traces"
            and not self.synapse.bn.use_running_average
        )

    def write_back(self, carry: Carry) -> None:
        if self.synapse is not None:
            self.synapse.write_stats(carry["stats"])


class SpikingFC(_Tapped):
    """``[Dropout(p)] -> Linear(n_in, n_out, bias=False) -> LIF/PLIF`` on ``[t*B, n_in]``.

    The dropout mask is drawn once per forward (one ``[B, n_in]`` mask shared by all T steps,
    SpikingJelly's ``layer.Dropout``), before the time loop, and travels in the carry.
    """

    def __init__(
        self, n_in: int, n_out: int, neuron: nnx.Module, *, dropout: float | None, dtype: Any,
        rngs: nnx.Rngs,
    ):  # fmt: skip
        self.dropout = None if dropout is None else layers.TimeSharedDropout(dropout, rngs=rngs)
        self.fc = layers.linear(n_in, n_out, rngs=rngs, dtype=dtype)
        self.neuron = neuron
        self.has_synapse = True

    def initial_carry(self, shape: tuple[int, ...] | None, dtype: Any, batch: int) -> Carry:
        drop = self.dropout
        on = drop is not None and not drop.deterministic and drop.rate > 0.0
        mask = drop.make_mask(batch, self.fc.in_features, dtype) if on else None
        v = (
            None
            if shape is None
            else layers.batch_varying(jnp.full(shape, self.neuron.v_reset, dtype))
        )
        return {"v": v, "mask": mask}

    def __call__(self, x: Array, t: int, carry: Carry) -> tuple[Array, Carry, dict[str, Array]]:
        if carry["mask"] is not None:
            x = (_unfold(x, t) * carry["mask"]).reshape(x.shape)
        tap = {"synapse_input": x}
        x, v, fired = fire(self.neuron, self.fc(x), t, carry["v"], self.record == "traces")
        tap.update(fired)
        return x, {"v": v, "mask": carry["mask"]}, tap

    def write_back(self, carry: Carry) -> None:
        del carry  # nothing: the dropout stream advanced when the mask was drawn


def make_neuron(kind: str, init_tau: float, **kwargs: Any) -> neurons.LIF | neurons.PLIF:
    """A PLIF (learnable tau, initialised at ``init_tau``) or LIF (fixed tau) neuron."""
    return (neurons.PLIF if kind == "plif" else neurons.LIF)(init_tau, **kwargs)
