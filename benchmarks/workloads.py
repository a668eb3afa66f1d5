"""What the benchmark times, in plif_jax (JAX) and in SpikingJelly 2.0 (torch CPU, multi-step).

Each ``jax_*`` / ``sj_*`` function builds one workload, times it with :mod:`benchmarks.timing`
and returns a flat dict of figures. Both sides get the same shapes, the same loss and the same
parameters to differentiate, so the ratio ``plif_jax / SpikingJelly`` compares like with like.

torch and spikingjelly are imported inside the ``sj_*`` functions only (optional dependencies).
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from benchmarks import roofline, timing
from plif_jax import layers, models, neurons
from plif_jax.training import run as train

# ---------------------------------------------------------------------------------------------
# The neuron layer: Linear(n_in -> n) + PLIF over T steps, forward + backward.
# ---------------------------------------------------------------------------------------------


def neuron_inputs(T: int, batch: int, n_in: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Shared inputs: ``x`` ``[T, B, n_in]`` in [0, 3), weight ``[n_in, n]``, loss weights."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(n_in)
    return {
        "x": rng.uniform(0.0, 3.0, (T, batch, n_in)).astype(np.float32),
        "kernel": rng.uniform(-bound, bound, (n_in, n)).astype(np.float32),
        # A random linear readout makes every spike's gradient distinct (a plain sum would not).
        "coef": rng.standard_normal((T, batch, n)).astype(np.float32),
    }


class _NeuronLayer(nnx.Module):
    def __init__(self, kernel: np.ndarray | None, n: int, *, rngs: nnx.Rngs):
        self.linear = nnx.data(None)
        if kernel is not None:
            self.linear = layers.linear(kernel.shape[0], n, rngs=rngs)
            self.linear.kernel[...] = jnp.asarray(kernel)
        self.plif = neurons.PLIF(2.0)

    def __call__(self, x_seq):
        if self.linear is not None:
            x_seq = self.linear(x_seq)
        return self.plif(x_seq)


def jax_neuron_layer(
    T: int, batch: int, n_in: int, n: int, *, with_linear: bool, repeats: int, unroll: int = 1
) -> dict[str, Any]:
    """plif_jax: gradients of ``sum(coef * spikes)`` w.r.t. the weight, PLIF's ``w`` and ``x``."""
    data = neuron_inputs(T, batch, n_in if with_linear else n, n)
    layer = _NeuronLayer(data["kernel"] if with_linear else None, n, rngs=nnx.Rngs(0))
    layer.plif.unroll = unroll  # lax.scan unroll factor of the neuron (a speed knob)
    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    x = jnp.asarray(data["x"])
    coef = jnp.asarray(data["coef"])

    @jax.jit
    def fwd_bwd(params, x):
        def loss(params, x):
            out = nnx.merge(graphdef, params, rest, copy=True)(x)
            return jnp.sum(out * coef)

        return jax.grad(loss, argnums=(0, 1))(params, x)

    t, _, _ = timing.time_jax(fwd_bwd, (params, x), repeats=repeats)
    return t


def sj_neuron_layer(
    T: int, batch: int, n_in: int, n: int, *, with_linear: bool, repeats: int
) -> dict[str, Any]:
    """SpikingJelly: ``nn.Linear`` + ``ParametricLIFNode(step_mode='m')``, same loss."""
    torch, neuron, surrogate = _torch_sj()
    data = neuron_inputs(T, batch, n_in if with_linear else n, n)
    linear = None
    if with_linear:
        linear = torch.nn.Linear(n_in, n, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(data["kernel"].T.copy()))
    node = neuron.ParametricLIFNode(
        init_tau=2.0,
        decay_input=True,
        v_threshold=1.0,
        v_reset=0.0,
        surrogate_function=surrogate.ATan(),
        detach_reset=True,
        step_mode="m",
    )
    x = torch.from_numpy(data["x"]).requires_grad_(True)
    coef = torch.from_numpy(data["coef"])
    params = list(node.parameters()) + ([] if linear is None else list(linear.parameters()))

    def fwd_bwd():
        for p in [*params, x]:
            p.grad = None
        node.reset()
        out = node(linear(x) if linear is not None else x)
        (out * coef).sum().backward()

    return timing.time_torch(fwd_bwd, repeats=repeats)


# ---------------------------------------------------------------------------------------------
# The paper networks: one Adam step of the paper's loss (train.train_step), and inference.
# ---------------------------------------------------------------------------------------------


def network_inputs(
    name: str, T: int, batch: int, options: dict[str, Any] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Shared inputs in the torch layout: static ``[B, C, H, W]``, events ``[T, B, 2, H, W]``."""
    opts = {k: v for k, v in (options or {}).items() if k not in ("T", "input_layout")}
    d = models.resolve(name, T=T if name in models.STATIC_NETS else None, **opts)
    rng = np.random.default_rng(seed)
    if d.is_static:
        x = rng.standard_normal((batch, d.in_channels, d.input_size, d.input_size))
    else:  # sparse event counts, like integrated DVS frames
        shape = (T, batch, d.in_channels, d.input_size, d.input_size)
        x = rng.poisson(0.3, shape) * (rng.random(shape) < 0.3)
    return {
        "x": x.astype(np.float32),
        "y": (np.arange(batch) % d.num_classes).astype(np.int32),
        "num_classes": d.num_classes,
    }


def _jax_model_options(name: str, T: int, options: dict[str, Any]) -> dict[str, Any]:
    opts = dict(options)
    if name in models.STATIC_NETS:
        opts.update(T=T, input_layout="NHWC")  # the data pipeline delivers static images NHWC
    else:
        opts.update(T=T)
    return opts


def _identity_preprocess(x, *, train: bool, rng):
    del train, rng
    return x


def jax_network(
    name: str,
    T: int,
    batch: int,
    *,
    repeats: int,
    options: dict[str, Any] | None = None,
    inference: bool = True,
) -> dict[str, Any]:
    """plif_jax: ``train.train_step`` (jit, state donated) and ``train.eval_step`` (inference).

    Returns:
      ``train`` and ``infer`` timings, ``train_memory`` / ``infer_memory`` (XLA's plan),
      ``flops_train`` / ``flops_infer`` (matmul + conv, counted from the jaxpr),
      ``xla_flops_train`` (XLA's cost analysis) and the resolved model options.
    """
    data = network_inputs(name, T, batch, options)
    options = _jax_model_options(name, T, options or {})
    x = data["x"]
    if name in models.STATIC_NETS:
        x = np.transpose(x, (0, 2, 3, 1))  # NCHW -> NHWC
    model = models.create_model(name, rngs=nnx.Rngs(params=0, dropout=1), **options)
    model.train()
    graphdef_train = nnx.graphdef(model)
    model.eval()
    graphdef_eval = nnx.graphdef(model)
    tx = optax.scale_by_adam()
    _, params, rest = nnx.split(model, nnx.Param, ...)
    # The train step donates its state: inference gets its own copy of the weights.
    infer_state = jax.tree.map(jnp.copy, (params, rest))
    state = train.TrainState(params, rest, tx.init(params))
    batch_dict = {
        "x": jnp.asarray(x),
        "y": jnp.asarray(data["y"]),
        "mask": jnp.ones((batch,), jnp.float32),
    }
    common = dict(preprocess=_identity_preprocess, num_classes=data["num_classes"], time_steps=T)
    step_fn = functools.partial(
        train.train_step, graphdef=graphdef_train, tx=tx, base_key=jax.random.key(0), **common
    )
    step = jax.jit(step_fn, donate_argnums=0)
    lr, epoch, step_i = jnp.float32(1e-3), jnp.int32(0), jnp.int32(0)
    args = (state, batch_dict, lr, epoch, step_i)
    t_train, compiled, jaxpr = timing.time_jax(
        step, args, repeats=repeats, rebind=lambda out, a: (out[0], *a[1:])
    )
    result: dict[str, Any] = {
        "options": {k: str(v) for k, v in options.items()},
        "train": t_train,
        "train_memory": timing.compiled_memory(compiled),
        "flops_train": roofline.jaxpr_flops(jaxpr),
        "xla_flops_train": roofline.xla_cost_flops(compiled),
    }
    del compiled
    if inference:
        eval_fn = functools.partial(train.eval_step, graphdef=graphdef_eval, **common)
        args = (*infer_state, batch_dict)
        t_infer, compiled, jaxpr = timing.time_jax(jax.jit(eval_fn), args, repeats=repeats)
        result["flops_infer"] = roofline.jaxpr_flops(jaxpr)
        result["infer"] = t_infer
        result["infer_memory"] = timing.compiled_memory(compiled)
    return result


def sj_network(
    name: str,
    T: int,
    batch: int,
    *,
    repeats: int,
    options: dict[str, Any] | None = None,
    inference: bool = True,
) -> dict[str, Any]:
    """SpikingJelly 2.0, multi-step (``step_mode='m'``): Adam step of the same loss; inference."""
    torch, _, _ = _torch_sj()
    from benchmarks import sj_reference

    options = dict(options or {})
    data = network_inputs(name, T, batch, options)
    static = name in models.STATIC_NETS
    if static:
        options["T"] = T
    net = sj_reference.build_sj_model(name, step_mode="m", bn_mode="folded", **options)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.from_numpy(data["x"])
    target = torch.nn.functional.one_hot(
        torch.from_numpy(data["y"]).long(), data["num_classes"]
    ).float()

    def train_step():
        opt.zero_grad(set_to_none=True)
        counts = sj_reference.sj_forward(net, x, T=T if static else None)
        loss = torch.nn.functional.mse_loss(counts / T, target)
        loss.backward()
        opt.step()

    result: dict[str, Any] = {"train": timing.time_torch(train_step, repeats=repeats)}
    if inference:
        net.eval()

        def infer():
            with torch.no_grad():
                sj_reference.sj_forward(net, x, T=T if static else None)

        result["infer"] = timing.time_torch(infer, repeats=repeats)
    return result


def remat_probe(layers_count: int = 8, rows: int = 8192, width: int = 512) -> dict[str, Any]:
    """Does ``jax.checkpoint`` lower XLA's planned memory on this backend? (compile only)

    A chain of ``layers_count`` dense+sin+tanh layers on ``[rows, width]``; the gradient with
    respect to the weights is compiled plain and with every layer under ``jax.checkpoint``.
    Returns XLA's temp allocation (MiB) of both and the size of one activation.
    """
    x = jnp.ones((rows, width), jnp.float32)
    ws = [jnp.full((width, width), 0.01, jnp.float32) for _ in range(layers_count)]

    def layer(w, h):
        return jnp.tanh(jnp.sin(h @ w) * 2.0)

    def loss(ws, x, remat):
        for w in ws:
            x = (jax.checkpoint(layer) if remat else layer)(w, x)
        return jnp.sum(x)

    out = {"layers": layers_count, "activation_mib": rows * width * 4 / 2**20}
    for remat in (False, True):
        compiled = jax.jit(jax.grad(functools.partial(loss, remat=remat))).lower(ws, x).compile()
        mem = timing.compiled_memory(compiled)
        out["temp_mib_remat" if remat else "temp_mib_plain"] = (
            None if mem is None else mem["temp_mib"]
        )
    return out


@contextlib.contextmanager
def reference_implementation():
    """Runs plif_jax with the implementations it had before the speed work (for before/after).

    Inside the context, neurons differentiate ``lif_step`` per time step (autodiff through the
    per-step surrogate custom_vjp, the ``return_membrane=True`` path) instead of the whole-scan
    custom_vjp, and 2x2 max pooling is ``nnx.max_pool`` (reduce_window; select_and_scatter
    gradient) instead of the reshape + first-max-index custom_vjp. Results are the same.
    """
    original_multistep = neurons.lif_multistep
    original_pool = layers.pool2x2

    def autodiff_multistep(x_seq, decay, *, return_membrane=False, **kw):
        out = original_multistep(x_seq, decay, return_membrane=True, **kw)
        return out if return_membrane else out[0]

    def reduce_window_pool(x, kind="max"):
        if kind == "max":
            return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
        return original_pool(x, kind)

    neurons.lif_multistep = autodiff_multistep
    layers.pool2x2 = reduce_window_pool
    try:
        yield
    finally:
        neurons.lif_multistep = original_multistep
        layers.pool2x2 = original_pool


def _torch_sj():
    """torch (threads = all cores) and SpikingJelly's neuron/surrogate modules."""
    import torch
    from spikingjelly.activation_based import neuron, surrogate

    torch.set_num_threads(os.cpu_count() or 1)
    return torch, neuron, surrogate


def torch_available() -> str | None:
    """None when torch + spikingjelly import, else the reason (printed, the rows skipped)."""
    try:
        _torch_sj()
    except ImportError as err:
        return f"SpikingJelly side skipped: {err} (install the `reference` extra)"
    return None
