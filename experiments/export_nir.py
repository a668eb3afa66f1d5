"""Export a trained run's network to NIR and check the imported graph's test accuracy.

    python -m experiments.export_nir --workdir runs/quickstart [--which best] [--out PATH]

Restores the checkpoint (``plif_jax.training.checkpoint.restore``), writes ``model.nir`` beside it
(``<workdir>/checkpoints/model.nir``, ``nir.write``), reads it back (``nir.read``), imports it
(``plif_jax.nir_graph.import_graph``) and evaluates on the run's test split, next to the
checkpoint's model:

* ``checkpoint``: the restored network;
* ``nir (plif_jax)``: the graph imported as a plif_jax network (exact: the same parameters);
* ``nir (generic runner)``: the same file through ``NIRNetwork`` with NIR's own semantics
  (folded BatchNorm, ``>`` threshold), as another tool reading only the NIR nodes would run it.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

from plif_jax import cli
from plif_jax.errors import DiskError
from plif_jax.runtime import disk


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.export_nir", description=__doc__)
    parser.add_argument("--workdir", required=True, help="the training run's --workdir")
    parser.add_argument("--which", default="best", choices=("best", "latest"))
    parser.add_argument("--out", default=None, help="default: <workdir>/checkpoints/model.nir")
    parser.add_argument("--dt", type=float, default=1.0, help="time step of the graph's tau")
    parser.add_argument(
        "--no-generic", action="store_true", help="skip evaluating the generic NIR runner"
    )
    args = parser.parse_args(argv)

    import nir

    from plif_jax import analysis, data, nir_graph
    from plif_jax.training import checkpoint

    model, config = checkpoint.restore(args.workdir, args.which)
    model.eval()
    out = args.out or os.path.join(args.workdir, "checkpoints", "model.nir")
    graph = nir_graph.export(model, dt=args.dt)
    written, unwritable = _write(nir, out, graph)
    back = nir.read(written)
    imported = nir_graph.import_graph(back)
    bundle = data.get_datasets(config)
    results = {"checkpoint": analysis.evaluate_split(model, bundle.test, bundle.preprocess)}
    results["nir (plif_jax)"] = analysis.evaluate_split(imported, bundle.test, bundle.preprocess)
    if not args.no_generic:
        runner = nir_graph.import_graph(nir_graph.strip_metadata(back))
        runner.T = model.config.T if model.config.is_static else None
        runner.input_layout = model.config.input_layout
        results["nir (generic runner)"] = analysis.evaluate_split(
            runner, bundle.test, bundle.preprocess, num_classes=model.num_classes
        )
    size = os.path.getsize(written)
    what = f"({size / 1e6:.2f} MB, {len(back.nodes)} nodes, {type(model).__name__})"
    print(f"wrote {out} {what}" if unwritable is None else f"checked a temporary copy {what}")
    for name, res in results.items():
        acc = getattr(res, "accuracy", None)
        acc = float(np.asarray(acc)) if acc is not None else float("nan")
        print(f"test accuracy {name:22s} {acc:.6f}")
    base = results["checkpoint"]
    same = np.array_equal(
        np.asarray(base.confusion), np.asarray(results["nir (plif_jax)"].confusion)
    )
    print(f"imported graph equals the checkpoint (confusion matrix): {same}")
    if unwritable is not None:
        os.unlink(written)
        raise DiskError(
            f"{unwritable}: the graph was checked above but not saved; pass --out with a "
            "writable path (e.g. --out /tmp/model.nir) to keep it."
        )
    return 0 if same else 1


def _write(nir, out: str, graph) -> tuple[str, str | None]:
    """Writes ``graph`` to ``out``; where a disk fault stops that (a read-only or full disk), to a
    temporary file instead, so that the check still runs. Returns ``(path written, the fault's
    description or None)``."""
    try:
        nir.write(out, graph)
        return out, None
    except OSError as e:
        unwritable = disk.describe(e, out)
        if unwritable is None:
            raise
    fd, tmp = tempfile.mkstemp(suffix=".nir")
    os.close(fd)
    nir.write(tmp, graph)
    return tmp, unwritable


if __name__ == "__main__":
    # A run directory that is missing, empty or another program's, a disk fault, Ctrl-C: one line.
    cli.run_plain(lambda: sys.exit(main()))
