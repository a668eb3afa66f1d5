"""One timed measurement of the peers suite in a fresh process (torch libraries and floor).

``python -m benchmarks.peer_worker '<json spec>'`` prints one line ``PEER_RESULT <json>``: the
guarded timing (:mod:`benchmarks.quiet`), the load guard's record, and the process's resident
memory: ``rss_base_mib`` after imports and input data, ``rss_peak_mib`` (``ru_maxrss``) after
the timed calls. A fresh process per measurement makes the peak RSS the workload's own and keeps
one library's threads and allocations away from the next.

Spec keys: ``peer`` (a :data:`benchmarks.peer_libs.PEERS` name, or ``"floor"`` for the layer's
matmuls alone), ``framework`` (floor only: ``"torch"`` or ``"jax"``), ``n``, ``T``, ``batch``,
``with_linear``, ``input_grad``, ``repeats``, ``warmup``, ``max_share``, ``paired_floor`` (a
library with the Linear: after the RSS is read, its step and its framework's floor matmuls timed
alternately in this same process, :func:`paired_overhead`).
"""

from __future__ import annotations

import importlib
import json
import resource
import statistics
import sys
from typing import Any

from benchmarks import peer_libs, quiet

PREFIX = "PEER_RESULT "


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def floor_calls(framework: str, data: dict[str, Any]) -> dict[str, Any]:
    """The layer's three matmuls alone on ``[T*B, n]``: forward, dx and dW (zero-argument calls)."""
    x2 = data["x"].reshape(-1, data["x"].shape[-1])
    g2 = data["coef"].reshape(x2.shape[0], -1)  # stands for dL/dY: any [T*B, n] array
    w = data["kernel"]
    if framework == "torch":
        import torch

        xt, gt, wt = (torch.from_numpy(a) for a in (x2, g2, w))
        return {"fwd": lambda: xt @ wt, "dx": lambda: gt @ wt.t(), "dW": lambda: xt.t() @ gt}
    import jax
    import jax.numpy as jnp

    xj, gj, wj = (jnp.asarray(a) for a in (x2, g2, w))
    fwd = jax.jit(lambda x, w: x @ w).lower(xj, wj).compile()
    dx = jax.jit(lambda g, w: g @ w.T).lower(gj, wj).compile()
    # dW in XLA:CPU's fast form: X transposed into its own buffer, then the plain dot on YNNPACK
    # (`x.T @ g` contracts the rows of both on Eigen, 1.6x slower at n = 4096; 2026-12-04).
    dw = jax.jit(lambda x, g: jax.lax.optimization_barrier(x.T) @ g).lower(xj, gj).compile()
    return {
        "fwd": lambda: jax.block_until_ready(fwd(xj, wj)),
        "dx": lambda: jax.block_until_ready(dx(gj, wj)),
        "dW": lambda: jax.block_until_ready(dw(xj, gj)),
    }


def floor_keys(input_grad: bool) -> tuple[str, ...]:
    """The floor's matmuls the workload needs: forward and dW, and dx when the input's gradient
    is taken."""
    return ("fwd", "dW", "dx") if input_grad else ("fwd", "dW")


def paired_overhead(
    step: Any, parts: dict[str, Any], keys: tuple[str, ...], *, guard: quiet.Guard, repeats: int
) -> dict[str, Any]:
    """The step and the floor's matmuls ``keys`` timed alternately in this process.

    ``repeats`` rounds of one step call then one call of each matmul; the overhead is the median
    of the rounds' differences. Process-level speed (which moves by up to 1.8x between processes
    a minute apart on some machines) then cancels, where step and floor timed in two processes
    carry both processes' drift into their difference.
    """
    for call in (step, *(parts[k] for k in keys)):
        call()  # warm-up
    steps, floors = [], []
    for _ in range(repeats):
        steps.append(guard.time(step))
        floors.append(sum(guard.time(parts[k]) for k in keys))
    return {
        "overhead_s": statistics.median(s - f for s, f in zip(steps, floors, strict=True)),
        "step_s": statistics.median(steps),
        "floor_s": statistics.median(floors),
        "repeats": repeats,
        "guard": guard.record(),
    }


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Times what ``spec`` names in this process; see the module doc."""
    guard = quiet.Guard(max_share=spec.get("max_share", 0.10), max_redo=spec.get("max_redo", 20))
    reps = dict(warmup=spec.get("warmup", 1), repeats=spec["repeats"])
    data = peer_libs.inputs(spec["T"], spec["batch"], spec["n"])
    out: dict[str, Any] = {}
    if spec["peer"] == "floor":
        calls = floor_calls(spec["framework"], data)
        out["rss_base_mib"] = _rss_mib()
        out["parts"] = {k: quiet.time_calls(c, guard=guard, **reps) for k, c in calls.items()}
    else:
        peer = peer_libs.PEERS[spec["peer"]]
        out["rss_base_mib"] = _rss_mib()
        run = peer.build(data, with_linear=spec["with_linear"], input_grad=spec["input_grad"])
        out["timing"] = quiet.time_calls(run.step, guard=guard, **reps)
        if run.compiled is not None:
            from benchmarks import timing

            out["xla_memory"] = timing.compiled_memory(run.compiled)
    out["rss_peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    out["guard"] = guard.record()
    if spec.get("paired_floor") and spec["peer"] != "floor":
        out["paired"] = paired_overhead(
            run.step,
            floor_calls(peer.framework, data),
            floor_keys(spec["input_grad"]),
            guard=quiet.Guard(max_share=guard.max_share, max_redo=guard.max_redo),
            repeats=spec["repeats"],
        )
    return out


def _import_first(spec: dict[str, Any]) -> None:
    """The libraries the measurement uses, loaded (and JAX started) before the baseline RSS."""
    if spec["peer"] == "floor":
        importlib.import_module("torch" if spec["framework"] == "torch" else "jax")
    else:
        for module in peer_libs.PEERS[spec["peer"]].modules:
            importlib.import_module(module)
    if "jax" in sys.modules:
        import flax.nnx  # noqa: F401
        import jax

        jax.devices()


def main(argv: list[str]) -> None:
    spec = json.loads(argv[0])
    _import_first(spec)
    from plif_jax.runtime import allocator

    if spec.get("allocator") == "glibc-tuned":  # as the benchmark's own process
        allocator.keep_freed_memory()
    with allocator.reusing_freed_memory():
        out = measure(spec)
    out["malloc"] = allocator.in_effect()
    print(PREFIX + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
