"""The five libraries of the peers suite: one Linear(n -> n) + LIF layer (or the LIF alone) each.

Every builder takes the same data (:func:`inputs`) and returns a :class:`Run`: ``step()`` runs
forward + backward of ``sum(spikes)`` (or ``sum(coef * spikes)`` for the cross-check) and
``result(out)`` turns what ``step()`` returned into ``(spikes, grads)`` NumPy arrays in
plif_jax's orientation and units (``grads['W']`` is ``[n_in, n]``; ``grads['x']`` when the input
needs a gradient). Each library gets its neuron closest to PLIF (learnable time constant where
the library has one, else LIF with tau = 2; hard reset where offered); what still differs is in
:attr:`Peer.differences`, printed with the results.

The Linear layer is applied once to all ``T * B`` rows (time folded into the batch) in every
library; the Open Neuromorphic script applies snnTorch's per time step, which is slower. No
library has a bias (the paper's nets have none). torch, spikingjelly, snntorch, norse and spyx are
optional: imported inside the builders only.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

import numpy as np

TAU = 2.0
K = 1.0 / TAU  # plif_jax's charge factor k = 1/tau


def inputs(T: int, batch: int, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``x`` ``[T, B, n]`` standard normal (as the Open Neuromorphic script), the Linear kernel
    ``[n, n]`` (PyTorch's default init bound), a random readout ``coef`` for the cross-check."""
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(n)
    return {
        "x": rng.standard_normal((T, batch, n)).astype(np.float32),
        "kernel": rng.uniform(-bound, bound, (n, n)).astype(np.float32),
        "coef": rng.standard_normal((T, batch, n)).astype(np.float32),
    }


@dataclasses.dataclass
class Run:
    """One built workload: ``step()`` = forward + backward; ``result(step())`` = NumPy outputs.

    ``compiled``: the XLA executable (JAX libraries: its memory plan is the memory figure).
    """

    step: Callable[[], Any]
    result: Callable[[Any], tuple[np.ndarray, dict[str, np.ndarray]]]
    compiled: Any = None


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str
    dist: str  # the distribution whose version is reported
    modules: tuple[str, ...]  # what must import for the peer to take part
    framework: str  # "jax" or "torch"
    neuron: str
    differences: tuple[str, ...]
    build: Callable[..., Run]
    in_scale: float = 1.0  # the library's input is k * ours (no input decay in its charge)

    def unavailable(self) -> str | None:
        """Why this peer cannot take part (a missing package), or None."""
        for module in self.modules:
            try:
                importlib.import_module(module)
            except Exception as err:  # noqa: BLE001 - any import failure skips the peer
                return f"`import {module}` failed ({type(err).__name__}: {err})"
        return None

    def version(self) -> str | None:
        try:
            return metadata.version(self.dist)
        except metadata.PackageNotFoundError:
            return None


def _needs_x_grad(with_linear: bool, input_grad: bool) -> bool:
    return input_grad or not with_linear


# ---------------------------------------------------------------------------------------------
# JAX: plif_jax and Spyx
# ---------------------------------------------------------------------------------------------
def _jax_run(layer, data, *, with_linear, input_grad, coef, call) -> Run:
    """Jitted gradient of ``sum(coef * spikes)`` w.r.t. the layer's parameters (and x)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, params, rest = nnx.split(layer, nnx.Param, ...)
    x = jnp.asarray(data["x"])
    c = None if coef is None else jnp.asarray(coef)

    def loss(params, x):
        spikes = call(nnx.merge(graphdef, params, rest, copy=True), x)
        return jnp.sum(spikes if c is None else spikes * c), spikes

    argnums = (0, 1) if _needs_x_grad(with_linear, input_grad) else 0
    fn = jax.jit(jax.grad(loss, argnums=argnums, has_aux=True))
    compiled = fn.trace(params, x).lower().compile()

    def step():
        return jax.block_until_ready(compiled(params, x))

    def result(out):
        grads, spikes = out
        g = {}
        if isinstance(argnums, tuple):
            grads, g["x"] = grads[0], np.asarray(grads[1])
        if with_linear:
            g["W"] = np.asarray(grads["linear"]["kernel"][...])
        return np.asarray(spikes), g

    return Run(step, result, compiled)


def _build_plif_jax(data, *, with_linear: bool, input_grad: bool, coef=None) -> Run:
    from flax import nnx

    from plif_jax import layers, neurons

    class Layer(nnx.Module):
        def __init__(self):
            n = data["kernel"].shape[1]
            self.linear = nnx.data(None)
            if with_linear:
                self.linear = layers.linear(n, n, rngs=nnx.Rngs(0))
                self.linear.kernel[...] = data["kernel"]
            self.plif = neurons.PLIF(TAU)

    def call(layer, x):
        return layer.plif(x if layer.linear is None else layer.linear(x))

    return _jax_run(
        Layer(), data, with_linear=with_linear, input_grad=input_grad, coef=coef, call=call
    )


def _build_spyx(data, *, with_linear: bool, input_grad: bool, coef=None) -> Run:
    import spyx
    from flax import nnx

    class Layer(nnx.Module):
        def __init__(self):
            n = data["kernel"].shape[1]
            self.linear = nnx.data(None)
            if with_linear:
                self.linear = nnx.Linear(n, n, use_bias=False, rngs=nnx.Rngs(0))
                self.linear.kernel[...] = data["kernel"]
            # A scalar beta given is a learnable nnx.Param (one per layer, like PLIF's w).
            self.lif = spyx.nn.LIF(
                (n,),
                beta=1.0 - K,
                threshold=1.0,
                activation=spyx.axn.arctan(1.0),
                rngs=nnx.Rngs(0),
            )

    def call(layer, x):
        current = x if layer.linear is None else layer.linear(x)
        return spyx.nn.run(layer.lif, current)[0]

    return _jax_run(
        Layer(), data, with_linear=with_linear, input_grad=input_grad, coef=coef, call=call
    )


# ---------------------------------------------------------------------------------------------
# torch: SpikingJelly, snnTorch, Norse (eager, every core)
# ---------------------------------------------------------------------------------------------
def _torch_run(data, *, with_linear, input_grad, coef, neuron_params, forward, scale) -> Run:
    """``forward(current [T, B, n]) -> spikes``; ``scale`` multiplies the library's input."""
    import torch

    n = data["kernel"].shape[1]
    linear = None
    x = torch.from_numpy(data["x"] if with_linear else data["x"] * np.float32(scale))
    if with_linear:
        linear = torch.nn.Linear(n, n, bias=False)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(data["kernel"].T) * scale))
    if _needs_x_grad(with_linear, input_grad):
        x.requires_grad_(True)
    c = None if coef is None else torch.from_numpy(coef)
    params = list(neuron_params) + ([] if linear is None else [linear.weight])

    def step():
        for p in [*params, x]:
            p.grad = None
        out = forward(x if linear is None else linear(x))
        (out.sum() if c is None else (out * c).sum()).backward()
        return out

    def result(out):
        g = {}
        if with_linear:
            g["W"] = linear.weight.grad.numpy().T * np.float32(scale)
        if x.grad is not None:
            g["x"] = x.grad.numpy() * np.float32(1.0 if with_linear else scale)
        return out.detach().numpy(), g

    return Run(step, result)


def _build_spikingjelly(data, *, with_linear: bool, input_grad: bool, coef=None) -> Run:
    from spikingjelly.activation_based import neuron, surrogate

    node = neuron.ParametricLIFNode(
        init_tau=TAU,
        decay_input=True,
        v_threshold=1.0,
        v_reset=0.0,
        surrogate_function=surrogate.ATan(),
        detach_reset=True,
        step_mode="m",
    )

    def forward(current):
        node.reset()
        return node(current)

    return _torch_run(
        data,
        with_linear=with_linear,
        input_grad=input_grad,
        coef=coef,
        neuron_params=node.parameters(),
        forward=forward,
        scale=1.0,
    )


def _build_snntorch(data, *, with_linear: bool, input_grad: bool, coef=None) -> Run:
    import snntorch
    import torch

    lif = snntorch.Leaky(
        beta=1.0 - K,
        learn_beta=True,
        threshold=1.0,
        reset_mechanism="zero",
        spike_grad=snntorch.surrogate.atan(alpha=2.0),
    )

    def forward(current):
        mem = torch.zeros_like(current[0])
        out = []
        for t in range(current.shape[0]):
            spk, mem = lif(current[t], mem)
            out.append(spk)
        return torch.stack(out)

    return _torch_run(
        data,
        with_linear=with_linear,
        input_grad=input_grad,
        coef=coef,
        neuron_params=lif.parameters(),
        forward=forward,
        scale=K,
    )


def _build_norse(data, *, with_linear: bool, input_grad: bool, coef=None) -> Run:
    import torch
    from norse.torch.module.lif_box import LIFBoxCell, LIFBoxParameters

    dt = 1e-3
    tau_mem_inv = torch.nn.Parameter(torch.tensor(K / dt))  # learnable: dt / tau = k
    p = LIFBoxParameters(
        tau_mem_inv=tau_mem_inv,
        v_leak=torch.tensor(0.0),
        v_th=torch.tensor(1.0),
        v_reset=torch.tensor(0.0),
        method="super",
        alpha=torch.tensor(100.0),
    )
    cell = LIFBoxCell(p, dt=dt)

    def forward(current):
        state, out = None, []
        for t in range(current.shape[0]):
            z, state = cell(current[t], state)
            out.append(z)
        return torch.stack(out)

    return _torch_run(
        data,
        with_linear=with_linear,
        input_grad=input_grad,
        coef=coef,
        neuron_params=[tau_mem_inv],
        forward=forward,
        scale=1.0,
    )


_FIRE_GT = "fires at H > V_th (plif_jax: H >= V_th; equal only on a set of measure zero)"

PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer(
            "plif_jax",
            "plif_jax",
            ("plif_jax",),
            "jax",
            "neurons.PLIF(init_tau=2) (ATan alpha=2, hard reset to 0, detach_reset)",
            (),
            _build_plif_jax,
        ),
        Peer(
            "Spyx",
            "spyx",
            ("spyx",),
            "jax",
            "spyx.nn.LIF(beta=0.5 learnable scalar, threshold=1, activation=axn.arctan(k=1))"
            " run by spyx.nn.run (lax.scan)",
            (
                "spikes from the membrane BEFORE this step's input: S[t] = H(V[t-1] - V_th)"
                " (one step later than PLIF)",
                "soft reset V -= S * V_th, the gradient flows through the reset",
                "charge V = beta V + X: no 1/tau factor on the input; beta clipped to [0, 1]",
                "surrogate 1/(pi (1 + (pi x)^2)): ATan alpha=2's shape, 1/pi its height",
                _FIRE_GT.replace("H > V_th", "V > V_th"),
            ),
            _build_spyx,
        ),
        Peer(
            "SpikingJelly",
            "spikingjelly",
            ("torch", "spikingjelly.activation_based.neuron"),
            "torch",
            "activation_based.neuron.ParametricLIFNode(init_tau=2, decay_input, v_reset=0,"
            " ATan, detach_reset, step_mode='m')",
            ("none: the reference PLIF (torch CPU backend)",),
            _build_spikingjelly,
        ),
        Peer(
            "snnTorch",
            "snntorch",
            ("torch", "snntorch"),
            "torch",
            "snntorch.Leaky(beta=0.5, learn_beta=True, reset_mechanism='zero', atan(alpha=2))"
            " looped over T",
            (
                "charge mem = beta mem + I: no 1/tau factor on the input, so it is fed k * ours"
                " (weight or input scaled by k = 0.5); beta clamped to [0, 1] instead of sigmoid",
                _FIRE_GT,
            ),
            _build_snntorch,
            in_scale=K,
        ),
        Peer(
            "Norse",
            "norse",
            ("torch", "norse.torch.module.lif_box"),
            "torch",
            "norse LIFBoxCell(tau_mem_inv=500 learnable, dt=1e-3, v_reset=0, method='super')"
            " looped over T",
            (
                "the gradient flows through the reset (plif_jax's detach_reset=False)",
                "surrogate SuperSpike 1/(|x| + 1)^2 (no ATan in Norse; alpha unused in 1.1)",
                "tau learnt as 1/tau_mem_inv (plif_jax: sigmoid(w))",
                _FIRE_GT,
            ),
            _build_norse,
        ),
    )
}
