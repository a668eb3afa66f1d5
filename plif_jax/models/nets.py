"""The six networks of the paper (Fang et al., ICCV 2021, Sec. 4.1; the original repository's
``codes/models.py``), assembled from :mod:`plif_jax.models.blocks`.

``C`` = 3x3 conv without bias, ``BN``, ``SN`` = PLIF/LIF, ``P`` = 2x2 pool, ``DO`` = time-shared
dropout, ``FC`` = linear without bias::

    MNISTNet (mnist, fashion_mnist)   C(1,128) BN | x T | SN P C BN SN P | DO FC(6272,2048) SN
                                      DO FC(2048,100) SN
    CIFAR10Net (cifar10)              C(3,256) BN | x T | SN (C BN SN)x2 P (C BN SN)x3 P |
                                      DO FC(16384,2048) SN FC(2048,100) SN
    NeuromorphicNet (nmnist,          (C BN SN P) x number_layer | DO FC(c*h*w, c*h*w/4) SN
      cifar10dvs, dvsgesture)         DO FC(., 10*K) SN

The static nets compute their encoder ``C BN`` once per forward and feed the same tensor at each
of the ``T`` steps. The output is the voting readout (mean of each group of 10 output neurons)
summed over time: the spike count per class, ``[B, num_classes]``.

One forward body per network (:meth:`SpikingNet._body`): the feature blocks then the classifier
on ``[t*B, ...]``. By default it runs once on all T steps; with ``remat_chunk=L`` the same body
runs under ``jax.checkpoint`` inside a ``lax.scan`` over ``T/L`` chunks, carrying membranes and
BatchNorm statistics, so the backward keeps the activations of ``L`` steps instead of ``T``.

Spiking layers are named ``sn0``, ``sn1``, ... in depth order (TensorBoard tags, analysis,
checkpoint summaries). Under ``nnx.capture`` a network viewed with ``record='rates'`` or
``record='traces'`` (``nnx.view``) sows what each layer did (:mod:`plif_jax.models.record`). With
``remat_chunk`` the convolutions inside the time loop are built with ``in_scan=True`` (the
:class:`ConvBN` view flag: the loop-friendly convolution).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from plif_jax import layers, neurons
from plif_jax import surrogate as surrogate_lib
from plif_jax.models import record as record_lib
from plif_jax.models.blocks import ConvBN, SpikingBlock, SpikingFC, make_neuron
from plif_jax.models.options import NetConfig, check_remat
from plif_jax.ops import xla_cpu

Array = jax.Array
VOTE_GROUP = 10

# jax.checkpoint's prevent_cse: inside lax.scan the loop already keeps XLA from merging the
# recomputation with the forward (JAX's advice for checkpoint under scan). Measured on DVS128
# Gesture T=20 B=2: same memory plan and step time within noise either way.
REMAT_PREVENT_CSE = False


class SpikingNet(nnx.Module):
    """The parts every paper network shares: input checks, the body, voting, recording.

    Attributes: ``config`` (the resolved :class:`NetConfig`), ``encoder`` (static nets: the
    :class:`ConvBN` fed the image once; else None), ``features`` (:class:`SpikingBlock` list),
    ``classifier`` (:class:`SpikingFC` list), ``T``, ``num_classes``, ``is_static``.
    """

    encoder: ConvBN | None
    features: nnx.List
    classifier: nnx.List

    def __init__(self, cfg: NetConfig):
        self.config = cfg
        self.name = cfg.name
        self.T = cfg.T
        self.num_classes = cfg.num_classes
        self.is_static = cfg.is_static
        self.record: str | None = None

    def _neuron(self):
        cfg = self.config
        return make_neuron(
            cfg.neuron,
            cfg.init_tau,
            detach_reset=cfg.detach_reset,
            surrogate=surrogate_lib.get(cfg.surrogate, cfg.surrogate_alpha),
            alpha_learnable=cfg.alpha_learnable,
        )

    def _conv(self, c_in: int, c_out: int, rngs: nnx.Rngs, *, encoder: bool = False) -> ConvBN:
        """A :class:`ConvBN`; one in the time loop (not the static ``encoder``) of a net that runs
        its body in the ``remat_chunk`` scan takes the loop-friendly form (``in_scan``)."""
        cfg = self.config
        in_scan = cfg.remat_chunk is not None and not encoder
        return ConvBN(c_in, c_out, bn_mode=cfg.bn_mode, dtype=cfg.dtype, rngs=rngs, in_scan=in_scan)

    def _fc(self, n_in: int, n_out: int, dropout: bool, rngs: nnx.Rngs) -> SpikingFC:
        rate = self.config.dropout if dropout else None
        return SpikingFC(n_in, n_out, self._neuron(), dropout=rate, dtype=self.config.dtype,
                         rngs=rngs)  # fmt: skip

    def _two_fc(self, n_in: int, rngs: nnx.Rngs, *, second_dropout: bool = True) -> nnx.List:
        """``DO FC(n_in, hidden) SN [DO] FC(hidden, 10 K) SN`` (the original ``create_2fc``)."""
        cfg = self.config
        return nnx.List([
            self._fc(n_in, cfg.hidden, dropout=True, rngs=rngs),
            self._fc(cfg.hidden, cfg.num_classes * VOTE_GROUP, dropout=second_dropout, rngs=rngs),
        ])  # fmt: skip

    def set_view(self, record: str | bool | None = None):
        """Hook for ``nnx.view``: what the forward sows (:mod:`plif_jax.models.record`).

        Args:
          record: ``'rates'`` sows each spiking layer's :class:`FiringRate`; ``'traces'`` also
            its :class:`LayerTrace`; ``False`` sows nothing (the default).
        """
        if record is not None:
            self.record = neurons.record_mode(record)

    def blocks(self) -> list[SpikingBlock | SpikingFC]:
        """The time-dependent blocks in order: the feature blocks, then the classifier."""
        return [*self.features, *self.classifier]

    def named_layers(self) -> dict[str, nnx.Module]:
        """Every layer by its short name, in depth order: ``conv<k>``/``bn<k>`` (the static
        encoder is ``conv0``/``bn0``), ``sn<i>``, ``dropout<j>``, ``fc<j>``."""
        out: dict[str, nnx.Module] = {}
        synapses = [self.encoder] + [b.synapse for b in self.features if b.synapse is not None]
        for k, synapse in enumerate(s for s in synapses if s is not None):
            out[f"conv{k}"], out[f"bn{k}"] = synapse.conv, synapse.bn
        out.update(self.spiking_layers())
        for j, block in enumerate(self.classifier):
            if block.dropout is not None:
                out[f"dropout{j}"] = block.dropout
            out[f"fc{j}"] = block.fc
        return out

    def next_synapses(self) -> dict[str, nnx.Module | None]:
        """``{layer: the conv or linear layer its spikes drive}`` (None for the output layer)."""
        blocks = self.blocks()
        out = {}
        for i, (name, _) in enumerate(self.spiking_layers()):
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            if isinstance(nxt, SpikingFC):
                out[name] = nxt.fc
            else:
                out[name] = None if nxt is None or nxt.synapse is None else nxt.synapse.conv
        return out

    def spiking_layers(self) -> list[tuple[str, nnx.Module]]:
        """``[(name, neuron), ...]`` for every spiking layer, in depth order (``sn0``, ...)."""
        return [(f"sn{i}", block.neuron) for i, block in enumerate(self.blocks())]

    def __call__(self, x: Array) -> Array:
        """Spike count per class summed over time, ``[B, num_classes]``, in ``[0, T]``.

        Args:
          x: static nets ``[B, C, H, W]`` (``[B, H, W, C]`` with ``input_layout='NHWC'``);
            neuromorphic nets ``[T, B, 2, H, W]`` (``[T, B, H, W, 2]`` with NHWC).
        """
        x, t, batch = self._check_input(x)
        if self.encoder is not None:  # the static nets' encoder: the image, once
            x, stats = self.encoder(x, 1, self.encoder.initial_stats())
            self.encoder.write_stats(stats)
        blocks = self.blocks()
        chunk = self.config.remat_chunk
        if chunk is None:
            if self.is_static:
                x = xla_cpu.repeat_time(x, t).reshape(t * batch, *x.shape[1:])
            carry = self._initial_carry(blocks, None, batch)
            out, carry, taps = self._body(x, t, carry)
        else:
            check_remat(chunk, self.config.bn_mode, t)
            out, carry, taps = self._chunked(x, t, batch, blocks)
        for block, c in zip(blocks, carry, strict=True):
            block.write_back(c)
        if self.record == "traces":
            names = list(taps)
            for i, name in enumerate(names):  # what each layer's spikes feed into
                feeds = i + 1 < len(blocks) and blocks[i + 1].has_synapse
                taps[name]["next_input"] = taps[names[i + 1]]["synapse_input"] if feeds else None
        if self.record:
            record_lib.sow_layers(self, taps)
        # float32 for float32/bf16 compute (spike counts are small integers / 10, exact there).
        out_dtype = jnp.promote_types(jnp.float32, self.config.dtype)
        return jnp.sum(layers.vote(out.astype(out_dtype), VOTE_GROUP), axis=0)

    def _body(self, x: Array, t: int, carry: list) -> tuple[Array, list, dict[str, dict]]:
        """The network on ``t`` time steps of ``x`` ``[t*B, ...]``: output spikes ``[t, B, N]``,
        the new carry (one per block) and each spiking layer's tap."""
        new_carry, taps = [], {}
        for i, block in enumerate(self.features):
            x, c, taps[f"sn{i}"] = block(x, t, carry[i])
            new_carry.append(c)
        x = x.reshape(
            x.shape[0], -1
        )  # NHWC order; plif_jax.models.porting permutes torch's CHW rows
        for j, block in enumerate(self.classifier):
            i = len(self.features) + j
            x, c, taps[f"sn{i}"] = block(x, t, carry[i])
            new_carry.append(c)
        return x.reshape(t, x.shape[0] // t, x.shape[-1]), new_carry, taps

    def _initial_carry(self, blocks: list, shapes: list | None, batch: int) -> list:
        """Each block's carry; ``shapes`` (membranes ``[B, ...]``) for a chunked run."""
        cfg = self.config
        chunked = shapes is not None
        stat_dtype = jnp.promote_types(cfg.dtype, jnp.float32) if chunked else None
        out = []
        for i, block in enumerate(blocks):
            shape = shapes[i] if chunked else None
            if isinstance(block, SpikingFC):
                out.append(block.initial_carry(shape, cfg.dtype, batch))
            else:
                out.append(block.initial_carry(shape, cfg.dtype, stat_dtype))
        return out

    def _chunked(self, x: Array, t: int, batch: int, blocks: list):
        """:meth:`_body` under ``jax.checkpoint`` in a ``lax.scan`` over ``T/L`` time chunks.

        Exact for ``bn_mode='per_step'`` (statistics per time step). The dropout masks are drawn
        once (the carry) and shared by every chunk; static nets repeat the encoded image ``L``
        times per chunk.
        """
        chunk = self.config.remat_chunk
        n = t // chunk
        shapes = self._membrane_shapes(batch)
        carry = self._initial_carry(blocks, shapes, batch)
        # The dropout masks are constants of the scan (drawn once), not a carry: a carried mask
        # would get a gradient accumulated through the reverse scan (DVS128 Gesture T=20 B=2,
        # benchmark memory suite: remat_chunk=2 2.97 s vs 2.44 s per step).
        masks = [c.pop("mask", None) for c in carry]
        encoded = x if self.is_static else None
        xs = None if self.is_static else x.reshape(n, chunk * batch, *x.shape[1:])

        def run_chunk(carry, x_in):
            if encoded is not None:
                x_in = xla_cpu.repeat_time(encoded, chunk)
                x_in = x_in.reshape(chunk * batch, *encoded.shape[1:])
            carry = [c if isinstance(b, SpikingBlock) else {**c, "mask": m}
                     for b, c, m in zip(blocks, carry, masks, strict=True)]  # fmt: skip
            out, carry, taps = self._body(x_in, chunk, carry)
            carry = [{k: v for k, v in c.items() if k != "mask"} for c in carry]
            # The scan stacks what the chunk returns over all T: only what is recorded (else the
            # stacked activations would undo the memory saving), rates as rates.
            if self.record == "rates":
                taps = {k: {"rate": neurons.firing_rate(tap["spikes"])} for k, tap in taps.items()}
            elif self.record != "traces":
                taps = {}
            return carry, (out, taps)

        body = jax.checkpoint(run_chunk, prevent_cse=REMAT_PREVENT_CSE)
        carry, (out, taps) = jax.lax.scan(body, carry, xs, length=n)
        merge = lambda a: a.reshape(t, *a.shape[2:])  # [T/L, L, ...] -> [T, ...]
        folded = lambda a: a.reshape(t * batch, *a.shape[2:])  # [T/L, L*B, ...] -> [T*B, ...]
        taps = {
            name: {k: folded(v) if k == "synapse_input" else merge(v) for k, v in tap.items()}
            for name, tap in taps.items()
        }
        return merge(out), carry, taps

    def _membrane_shapes(self, batch: int) -> list[tuple[int, ...]]:
        """``[B, ...]`` of each spiking layer's membrane."""
        cfg = self.config
        size, shapes = cfg.input_size, []
        for block in self.features:
            if block.synapse is not None:
                channels = block.synapse.conv.out_features
            else:
                channels = self.encoder.conv.out_features
            shapes.append((batch, size, size, channels))
            if block.pooling is not None:
                size //= 2
        shapes += [(batch, block.fc.out_features) for block in self.classifier]
        return shapes

    def _check_input(self, x: Array) -> tuple[Array, int, int]:
        """Validates the input; returns it NHWC (static ``[B, ...]``, events ``[T*B, ...]``),
        the number of time steps and the batch size."""
        cfg = self.config
        want_rank = 4 if self.is_static else 5
        layout = ("[B, " if self.is_static else "[T, B, ") + (
            "C, H, W]" if cfg.input_layout == "NCHW" else "H, W, C]"
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
            return x, self.T, x.shape[0]
        t = x.shape[0]
        if self.T is not None and t != self.T:
            raise ValueError(
                f"{self.name} was built for T={self.T} time steps, got T={t} in input "
                f"shape; create it with T={t} (or T=None to accept any)"
            )
        return x.reshape(t * x.shape[1], *x.shape[2:]), t, x.shape[1]


class MNISTNet(SpikingNet):
    """MNIST and Fashion-MNIST: ``C(1,c) BN | x T | SN P C BN SN P | DO FC SN DO FC SN``."""

    def __init__(self, cfg: NetConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        c, pool, side = cfg.channels, cfg.pooling, cfg.input_size // 2 // 2
        self.encoder = self._conv(cfg.in_channels, c, rngs, encoder=True)  # the image, once
        self.features = nnx.List([
            SpikingBlock(None, self._neuron(), pool),
            SpikingBlock(self._conv(c, c, rngs), self._neuron(), pool),
        ])  # fmt: skip
        self.classifier = self._two_fc(c * side * side, rngs)


class CIFAR10Net(SpikingNet):
    """CIFAR-10: ``C(3,c) BN | x T | SN (C BN SN)x2 P (C BN SN)x3 P | DO FC SN FC SN``."""

    def __init__(self, cfg: NetConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        c, pool, side = cfg.channels, cfg.pooling, cfg.input_size // 2 // 2
        self.encoder = self._conv(cfg.in_channels, c, rngs, encoder=True)
        conv = lambda pooling: SpikingBlock(self._conv(c, c, rngs), self._neuron(), pooling)
        self.features = nnx.List([
            SpikingBlock(None, self._neuron(), None),
            conv(None), conv(pool),
            conv(None), conv(None), conv(pool),
        ])  # fmt: skip
        self.classifier = self._two_fc(c * side * side, rngs, second_dropout=False)


class NeuromorphicNet(SpikingNet):
    """N-MNIST, CIFAR10-DVS, DVS128 Gesture: ``(C BN SN P) x number_layer | DO FC SN DO FC SN``
    (the original ``create_conv_sequential`` and ``create_2fc``)."""

    def __init__(self, cfg: NetConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg)
        c, side = cfg.channels, cfg.input_size
        self.encoder = None
        blocks = []
        for i in range(cfg.number_layer):
            synapse = self._conv(cfg.in_channels if i == 0 else c, c, rngs)
            blocks.append(SpikingBlock(synapse, self._neuron(), cfg.pooling))
            side //= 2
        self.features = nnx.List(blocks)
        self.classifier = self._two_fc(c * side * side, rngs)


NETS: dict[str, type[SpikingNet]] = {
    "mnist": MNISTNet,
    "fashion_mnist": MNISTNet,
    "cifar10": CIFAR10Net,
    "nmnist": NeuromorphicNet,
    "cifar10dvs": NeuromorphicNet,
    "dvsgesture": NeuromorphicNet,
}


def build(cfg: NetConfig, *, rngs: nnx.Rngs) -> SpikingNet:
    """The network class of ``cfg.name``, built from the resolved options."""
    return NETS[cfg.name](cfg, rngs=rngs)
