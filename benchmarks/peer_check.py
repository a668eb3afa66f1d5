"""Before timing: each library's spikes and weight gradient against plif_jax's on a small input.

Where a library's neuron computes what plif_jax's PLIF computes (SpikingJelly; snnTorch fed
k * ours; Norse's forward), its spikes must EQUAL plif_jax's. Where its neuron differs (Norse's
backward: SuperSpike, gradient through the reset; Spyx: delayed spike, soft reset), its spikes and
gradients are compared with :func:`emulate`, the library's stated equations written here in JAX;
the emulator is itself checked against plif_jax on PLIF's settings, so every library is tied to
plif_jax by one equality or through the emulator. Gradients: ``max|a - b| / max|b|``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks import peer_libs

GRAD_RTOL = 1e-4  # float32: different summation orders (torch vs XLA matmuls, loop order)


def _atan_grad(x):
    return 1.0 / (1.0 + (math.pi * x) ** 2)  # ATan alpha=2: alpha/2 / (1 + (pi/2 alpha x)^2)


def _superspike_grad(x):
    import jax.numpy as jnp

    return 1.0 / (jnp.abs(x) + 1.0) ** 2


def _spyx_arctan_grad(x):
    return _atan_grad(x) / math.pi


# Each library's equations: charge, fire, reset, surrogate (see peer_libs' differences).
EMULATED = {
    "plif_jax": dict(delayed=False, soft=False, detach=True, grad=_atan_grad),
    "Norse": dict(delayed=False, soft=False, detach=False, grad=_superspike_grad),
    "Spyx": dict(delayed=True, soft=True, detach=False, grad=_spyx_arctan_grad, no_input_k=True),
}


def emulate(current, *, delayed, soft, detach, grad, no_input_k=False, threshold=1.0):
    """Spikes ``[T, B, n]`` of a LIF written from a library's stated equations (``lax.scan``)."""
    import jax
    import jax.numpy as jnp

    @jax.custom_vjp
    def fire(z):
        return (z > 0).astype(z.dtype)

    fire.defvjp(lambda z: (fire(z), z), lambda z, g: (g * grad(z),))
    beta = 1.0 - peer_libs.K
    scale = 1.0 if no_input_k else peer_libs.K

    def step(v, x):
        if delayed:  # Spyx: fire on the membrane before this step's input, then subtract
            s = fire(v - threshold)
            return beta * v + x - s * threshold, s
        h = beta * v + scale * x
        s = fire(h - threshold)
        s_reset = jax.lax.stop_gradient(s) if detach else s
        v_next = h - s_reset * threshold if soft else h * (1.0 - s_reset)
        return v_next, s

    return jax.lax.scan(step, jnp.zeros_like(current[0]), current)[1]


def emulated_outputs(name: str, data: dict[str, np.ndarray], *, with_linear: bool):
    """``(spikes, grads)`` of :func:`emulate` with library ``name``'s equations, same loss."""
    import jax
    import jax.numpy as jnp

    cfg = EMULATED[name]
    coef = jnp.asarray(data["coef"])

    def loss(w, x):
        current = x @ w if with_linear else x
        spikes = emulate(current, **cfg)
        return jnp.sum(spikes * coef), spikes

    args = (jnp.asarray(data["kernel"]), jnp.asarray(data["x"]))
    (gw, gx), spikes = jax.grad(loss, argnums=(0, 1), has_aux=True)(*args)
    grads = {"W": np.asarray(gw)} if with_linear else {"x": np.asarray(gx)}
    return np.asarray(spikes), grads


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0)


def compare(spikes, grads, ref_spikes, ref_grads, key: str) -> dict[str, Any]:
    diff = int(np.sum(spikes != ref_spikes))
    rel = _rel(grads[key], ref_grads[key])
    return {
        "spikes_differing": diff,
        "spikes_total": int(spikes.size),
        "grad_key": key,
        "grad_rel_err": rel,
        "ok": diff == 0 and rel <= GRAD_RTOL,
    }


def check(peer: peer_libs.Peer, data: dict[str, np.ndarray], *, with_linear: bool) -> dict:
    """Runs ``peer`` on ``data`` (``sum(coef * spikes)``) and compares it; see the module doc."""
    key = "W" if with_linear else "x"
    run = peer.build(data, with_linear=with_linear, input_grad=False, coef=data["coef"])
    spikes, grads = run.result(run.step())
    ours = peer_libs.PEERS["plif_jax"]
    if peer.name == "plif_jax":  # plif_jax against the emulator of PLIF: ties the emulator down
        ref = emulated_outputs("plif_jax", data, with_linear=with_linear)
        against = "emulated PLIF equations"
    elif peer.name in EMULATED:
        ref = emulated_outputs(peer.name, data, with_linear=with_linear)
        against = f"{peer.name}'s equations emulated in JAX"
    else:
        o = ours.build(data, with_linear=with_linear, input_grad=False, coef=data["coef"])
        ref = o.result(o.step())
        against = "plif_jax"
    out = compare(spikes, grads, *ref, key)
    out["against"] = against
    out["firing_rate"] = float(np.mean(spikes))
    if peer.name != "plif_jax" and against != "plif_jax":  # the forward against ours, too
        o = ours.build(data, with_linear=with_linear, input_grad=False, coef=data["coef"])
        our_spikes = o.result(o.step())[0]
        out["spikes_differing_from_plif_jax"] = int(np.sum(spikes != our_spikes))
    return out
