"""XLA:CPU forms, A/B in one process: the Linear's weight gradient, the LIF loop chunked, and
the LIF loops as XLA loops or the native kernel.

    python -m benchmarks.studies.cpu_loops.measure            # all three studies
    python -m benchmarks.studies.cpu_loops.measure dw         # or some: dw / chunks / native

``dw``: ``dW = X^T G`` for the peers' and the paper nets' Linear shapes, as the contraction over
the rows of both (what autodiff and GPUs use; XLA:CPU runs it on Eigen) and as the plain dot of
``X`` transposed into its own buffer (YNNPACK; what :func:`plif_jax.ops.xla_cpu.dense` does on
CPU since 2026-12-04). ``chunks``: the neuron's forward time loop
(:func:`plif_jax.ops.lif_loop._lif_forward_loop`) against the same loop run once per chunk of
the neuron axis (so that a step's rows stay in L2); H is checked equal. ``native``: the peers'
neuron-alone step (gradients of the sum of the spikes w.r.t. the time constant's weight and the
input, batch 16) with the XLA loops and with :mod:`plif_jax.ops.lif_native`'s kernel (traced
with ``lif_native.enabled``), the gradients checked close. Both forms of each are
compiled up front and called alternately; medians of 15 calls, the benchmark's allocator. The
figures and the decisions: docs/explanation/performance.md, "Paired rounds on an AMD EPYC".
"""

from __future__ import annotations

import functools
import statistics
import sys
import time

# [rows, in, out]: the peers' Linear at n = 4096, T = 100; MNIST's two FCs (T 8 x B 16); N-MNIST's
# first FC (T 10 x B 16); CIFAR-10's (T 8 x B 8); the DVS nets' (T 20 x B 2).
DW_SHAPES = [
    (1600, 4096, 4096),
    (128, 6272, 2048),
    (128, 2048, 100),
    (160, 8192, 2048),
    (64, 16384, 2048),
    (40, 2048, 512),
]
# [T, neurons per step]: the peers' n = 4096, T = 100 and n = 1024, T = 500 (batch 16), an MNIST
# conv layer at batch 16 (128 x 28 x 28 x 16), a layer of a million neurons over T = 20.
CHUNK_SHAPES = [(100, 65536), (500, 16384), (8, 1605632), (20, 1048576)]
CHUNK = 16384
# [T, n]: the peers' neuron-alone grid (batch 16).
NATIVE_SHAPES = [(100, 1024), (500, 1024), (100, 4096), (500, 4096)]


def _alternate(calls: dict, repeats: int = 15) -> dict[str, float]:
    import jax

    for call in calls.values():
        jax.block_until_ready(call())
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(repeats):
        for k, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def study_dw() -> None:
    import jax

    def contraction(x, g):
        return jax.lax.dot_general(x, g, (((0,), (0,)), ((), ())))

    def transposed_copy(x, g):
        return jax.lax.optimization_barrier(x.T) @ g

    for rows, n_in, n_out in DW_SHAPES:
        x = jax.random.normal(jax.random.key(0), (rows, n_in))
        g = jax.random.normal(jax.random.key(1), (rows, n_out))
        forms = {"contraction (Eigen)": contraction, "X^T copied (YNNPACK)": transposed_copy}
        compiled = {k: jax.jit(f).lower(x, g).compile() for k, f in forms.items()}
        med = _alternate({k: functools.partial(c, x, g) for k, c in compiled.items()})
        cells = " | ".join(f"{k} {1e3 * t:.2f} ms" for k, t in med.items())
        print(f"dW [{rows}, {n_in}] x [{rows}, {n_out}]: {cells}", flush=True)


def _chunked_forward(x, v0, decay, chunk):
    """The forward loop of ``lif_loop`` over ``[T, n]``, one time loop per chunk of neurons."""
    import jax
    import jax.numpy as jnp

    from plif_jax.ops import lif_loop

    T, n = x.shape
    charge = functools.partial(lif_loop._charge, decay=decay, v_reset=0.0)

    def over_chunk(c, buf):
        start = c * chunk
        v0_c = jax.lax.dynamic_slice_in_dim(v0, start, chunk)

        def body(t, buf):
            h_prev = jax.lax.dynamic_slice(buf, (jnp.maximum(t - 1, 0), start), (1, chunk))[0]
            v = jnp.where(t == 0, v0_c, lif_loop._reset(h_prev, 1.0, 0.0))
            x_t = jax.lax.dynamic_slice(buf, (t, start), (1, chunk))[0]
            return jax.lax.dynamic_update_slice(buf, charge(v, x_t)[None], (t, start))

        return jax.lax.fori_loop(0, T, body, buf)

    return jax.lax.fori_loop(0, n // chunk, over_chunk, x)


def study_chunks() -> None:
    import jax
    import jax.numpy as jnp

    from plif_jax.ops import lif_loop

    decay = jnp.float32(0.5)
    for T, n in CHUNK_SHAPES:
        x = jax.random.normal(jax.random.key(0), (T, n)) * 2
        v0 = jnp.zeros((n,))
        forms = {"one loop": lambda x, v0: lif_loop._lif_forward_loop(x, v0, decay, 1.0, 0.0, 1)}
        if n % CHUNK == 0 and n > CHUNK:
            forms[f"chunks of {CHUNK}"] = functools.partial(
                _chunked_forward, decay=decay, chunk=CHUNK
            )
        compiled = {k: jax.jit(f).lower(x, v0).compile() for k, f in forms.items()}
        ref = compiled["one loop"](x, v0)
        for k, c in compiled.items():
            if not bool(jnp.array_equal(c(x, v0), ref)):
                raise AssertionError(f"{k}: H differs from the one loop's at [{T}, {n}]")
        med = _alternate({k: functools.partial(c, x, v0) for k, c in compiled.items()})
        cells = " | ".join(f"{k} {1e3 * t:.2f} ms" for k, t in med.items())
        print(f"forward loop [{T}, {n}]: {cells}", flush=True)


def study_native() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from plif_jax import neurons
    from plif_jax.ops import lif_native

    print(lif_native.status(), flush=True)

    def step(w, x):
        return jnp.sum(neurons.lif_multistep(x, jax.nn.sigmoid(w)))

    for T, n in NATIVE_SHAPES:
        x = jnp.asarray(np.random.default_rng(0).standard_normal((T, 16, n)), jnp.float32)
        w = jnp.float32(0.0)
        compiled = {}
        for name, flag in (("XLA loops", False), ("native kernel", True)):
            with lif_native.enabled(flag):
                compiled[name] = jax.jit(jax.grad(step, argnums=(0, 1))).lower(w, x).compile()
        ref, got = (c(w, x) for c in compiled.values())
        for a, b in zip(ref, got, strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5, atol=1e-6)
        med = _alternate({k: functools.partial(c, w, x) for k, c in compiled.items()})
        cells = " | ".join(f"{k} {1e3 * t:.2f} ms" for k, t in med.items())
        ratio = med["XLA loops"] / med["native kernel"]
        print(f"neuron alone [{T}, 16, {n}]: {cells} | {ratio:.2f}x", flush=True)


def main(argv: list[str]) -> None:
    from plif_jax.runtime import allocator

    which = argv or ["dw", "chunks", "native"]
    studies = {"dw": study_dw, "chunks": study_chunks, "native": study_native}
    bad = [w for w in which if w not in studies]
    if bad:
        sys.exit(f"unknown study {bad}; choose from {list(studies)}")
    allocator.keep_freed_memory()
    with allocator.reusing_freed_memory():
        for w in which:
            studies[w]()


if __name__ == "__main__":
    main(sys.argv[1:])
