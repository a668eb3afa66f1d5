"""Deterministic outputs of the six networks, for before/after comparisons of a refactor.

Writes a JSON of full-size parameter counts and, for reduced-width versions of all six nets (PLIF
and LIF, max and avg pooling, both BatchNorm modes; remat_chunk=1 on mnist and nmnist), the loss
and per-parameter |grad| sums of two SGD steps, hashes of every state array after them and the
eval spike counts. Run it on both trees and compare the files (every key must be equal)::

    PYTHONPATH=<old tree> python -m benchmarks.deterministic_outputs before.json
    python -m benchmarks.deterministic_outputs after.json
    python -m benchmarks.deterministic_outputs --compare before.json after.json

The gradients are taken twice: eagerly (the keys without a prefix: every operation rounded on
its own, as in a user's un-jitted ``nnx.grad``) and under ``nnx.jit`` (keys ``jit/...``: XLA's
fused kernels, as in the train step). The two can differ by an ulp where a kernel change moves
an operation from an eager dispatch into a fused loop body (``--mode eager`` or ``jit`` writes
one of them).

Used for the architecture rebuild of 2026-12-01 (70 keys, all equal) and the house of issue 20:
``benchmarks/results/deterministic_outputs_28164ee.json`` is the tree before the house (eager keys
only); ``..._28164ee_peers_edge.json`` is that tree with the one kernel change that landed beside
the house (00a9658, issue 24: ``lif_loop``'s first and last steps inside its loops, the Linear's
``xla_cpu.dense``; files patched onto 28164ee), both modes; ``..._house.json`` is the house
(134 keys, equal to the edge record, 2026-12-03). The kernel change alone moves 17 eager keys and 3
``jit/cifar10dvs`` keys by float rounding (~1e-7 relative; bisected on 2026-12-03: every other
commit between 28164ee and the house leaves all 134 keys equal).
"""

import hashlib
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import models


def h(a) -> str:
    return hashlib.sha256(np.ascontiguousarray(np.asarray(a)).tobytes()).hexdigest()[:16]


SMALL = {
    "mnist": dict(channels=4, hidden=16, T=3),
    "fashion_mnist": dict(channels=4, hidden=16, T=3, pooling="avg"),
    "cifar10": dict(channels=4, hidden=16, T=2, input_size=16),
    "nmnist": dict(channels=4, input_size=16, hidden=12),
    "cifar10dvs": dict(channels=3, input_size=32, neuron="lif", init_tau=3.0),
    "dvsgesture": dict(channels=3, input_size=64, number_layer=5, bn_mode="folded", T=4),
}


def outputs(compiled: bool = False) -> dict:
    """The deterministic outputs, keyed ``<net>/<what>`` (``compiled``: ``jit/<net>/<what>``)."""
    out = {}
    prefix = "jit/" if compiled else ""
    for name, opts in SMALL.items():
        full = nnx.eval_shape(lambda name=name: models.create_model(name, rngs=nnx.Rngs(0)))
        out[name + "/params_full"] = models.count_params(full)
        for remat in (None, 2) if name in ("nmnist", "mnist") else (None,):
            o = dict(opts)
            if remat:
                o["remat_chunk"] = 1
            m = models.create_model(name, rngs=nnx.Rngs(params=3, dropout=4), **o)
            key = jax.random.key(7)
            if name in models.STATIC_NETS:
                s = o.get("input_size", 32 if name == "cifar10" else 28)
                c = 3 if name == "cifar10" else 1
                x = jax.random.normal(key, (4, c, s, s))
            else:
                s = o["input_size"]
                T = o.get("T", 5)
                x = jax.random.poisson(key, 0.3, (T, 4, 2, s, s)).astype(jnp.float32)
            y = jnp.arange(4) % m.num_classes
            tag = f"{prefix}{name}/remat{remat}"
            out[tag + "/params_small"] = models.count_params(m)

            def loss(m, x, o=o, y=y):
                c = m(x)
                T = o.get("T", x.shape[0])
                return jnp.mean(jnp.square(c / T - jax.nn.one_hot(y, m.num_classes)))

            grad = nnx.value_and_grad(loss)
            if compiled:
                grad = nnx.jit(grad)
            m.train()
            for step in range(2):
                loss_value, g = grad(m, x)
                out[f"{tag}/loss{step}"] = float(loss_value)
                out[f"{tag}/grad{step}"] = sorted(
                    float(jnp.sum(jnp.abs(v[...]))) for p, v in nnx.to_flat_state(g)
                )
                # plain SGD so the next step sees new params
                nnx.update(m, jax.tree.map(lambda p, gg: p - 0.1 * gg, nnx.state(m, nnx.Param), g))
            st = {
                "/".join(map(str, p)): h(v[...])
                for p, v in nnx.to_flat_state(nnx.state(m))
                if not jax.dtypes.issubdtype(
                    getattr(v[...], "dtype", np.float32), jax.dtypes.prng_key
                )
            }
            out[tag + "/state_after"] = sorted(st.values())
            m.eval()
            out[tag + "/eval_counts"] = h(m(x))
            out[tag + "/eval_counts_sum"] = float(jnp.sum(m(x)))
    return out


USAGE = (
    "usage: python -m benchmarks.deterministic_outputs [--mode eager|jit] OUT.json | "
    "--compare BEFORE.json AFTER.json"
)


def main(argv: list[str]) -> None:
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__)
        sys.exit(0)
    if argv[:1] == ["--compare"]:
        if len(argv) != 3:
            sys.exit(f"--compare takes two JSON files. {USAGE}")
        with open(argv[1]) as f1, open(argv[2]) as f2:
            a, b = json.load(f1), json.load(f2)
        diffs = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        for k in diffs:
            print("DIFF", k)
        print(f"keys {len(a)}, diffs {len(diffs)}")
        sys.exit(1 if diffs else 0)
    mode = "both"
    if argv[:1] == ["--mode"]:
        mode, argv = (argv[1], argv[2:]) if len(argv) > 1 else ("", [])
    if mode not in ("both", "eager", "jit") or len(argv) != 1 or argv[0].startswith("-"):
        sys.exit(f"expected one output path (and --mode eager or jit), got {argv!r}. {USAGE}")
    out = {}
    if mode in ("both", "eager"):
        out.update(outputs(compiled=False))
    if mode in ("both", "jit"):
        out.update(outputs(compiled=True))
    with open(argv[0], "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
    print("wrote", argv[0], len(out))


if __name__ == "__main__":
    main(sys.argv[1:])
