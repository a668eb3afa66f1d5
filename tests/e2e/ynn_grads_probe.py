"""Loss and gradients of the paper's objective on small versions of the paper's networks.

Run as a script by ``tests/e2e/test_cli.py`` (``python tests/e2e/ynn_grads_probe.py OUT.npz``)
once with the YNN flag the train CLI sets and once with XLA:CPU's YNNPACK fusions off: XLA reads
``XLA_FLAGS`` once per process. Also saves, per net, how many YNNPACK fusions its compiled
program has (``hlo/<net>/ynn_fusions``).
"""

import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from plif_jax import models
from plif_jax.training import run as train

SMALL = dict(channels=8, hidden=32)
# Fashion-MNIST's net is MNIST's (models.options.PAPER: the same class and sizes), so the same
# program: not compiled twice.
SHAPES = {  # name: (extra options, input shape)
    "mnist": (dict(T=4, input_layout="NHWC"), (6, 28, 28, 1)),
    "cifar10": (dict(T=3, input_layout="NHWC"), (4, 32, 32, 3)),
    "nmnist": (dict(T=5), (5, 6, 2, 34, 34)),
    "cifar10dvs": (dict(T=4, input_size=32, number_layer=3), (4, 4, 2, 32, 32)),
    "dvsgesture": (dict(T=4, input_size=32, number_layer=3), (4, 4, 2, 32, 32)),
}


def main(out: str) -> None:
    results = {}
    rng = np.random.default_rng(0)
    for name, (opts, shape) in SHAPES.items():
        model = models.create_model(name, rngs=nnx.Rngs(params=0, dropout=1), **SMALL, **opts)
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if name in models.STATIC_NETS:
            x = rng.normal(size=shape)
        else:
            x = rng.poisson(0.5, size=shape)
        x = jnp.asarray(x, jnp.float32)
        y = jnp.asarray(np.arange(shape[1] if x.ndim == 5 else shape[0]) % 10, jnp.int32)
        mask = jnp.ones(y.shape, jnp.float32)
        t = opts["T"]

        k = model.num_classes

        @jax.jit
        def value_and_grad(params, rest, x=x, y=y, mask=mask, t=t, graphdef=graphdef, k=k):
            def objective(params):
                counts = nnx.merge(graphdef, params, rest, copy=True)(x)
                return train.loss_fn(counts, y, mask, k, t)

            return jax.value_and_grad(objective)(params)

        compiled = value_and_grad.lower(params, rest).compile()
        ynn = re.findall(r"^\s*(?:ROOT )?%ynn_fusion[.\d]* = ", compiled.as_text(), re.M)
        results[f"hlo/{name}/ynn_fusions"] = np.asarray(len(ynn))
        value, grads = compiled(params, rest)
        results[f"{name}/loss"] = np.asarray(value)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            results[f"{name}/{jax.tree_util.keystr(path)}"] = np.asarray(g)
    np.savez(out, **results)


if __name__ == "__main__":
    main(sys.argv[1])
