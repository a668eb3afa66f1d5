"""experiments/explore_tau.ipynb runs headless on a tiny real training run and writes its figures.

The run: the offline ``digits_events`` data (emulated events from real digits) on the ``nmnist``
network at 4 channels, hidden width 16, T = 4, two epochs of 3 steps. To keep the frame conversion
short the data is cut to the first 50 real digits of each class (40 train, 10 test per class) by
``FEW_DIGITS``, run both here and, as an extra first cell, in the notebook's kernel (the stored
notebook is unchanged). The checkpoint is read back through the public
``plif_jax.training.checkpoint.restore`` by both the analysis API and the notebook (nbclient, the
venv's
``python3`` kernel, matplotlib Agg).
"""

import math
import pathlib

import matplotlib.image
import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

from configs import common
from plif_jax import analysis, models
from plif_jax.data import digits
from plif_jax.training import checkpoint
from plif_jax.training import run as train
from tests.support.runs import cache_env, compilation_cache

pytestmark = pytest.mark.e2e  # a Jupyter kernel

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "experiments" / "explore_tau.ipynb"
FIGURES = (
    "tau_per_layer.png",
    "tau_trajectories.png",
    "compare_paper.png",
    "membrane_traces.png",
    "spike_raster.png",
    "firing_rate.png",
    "confusion_matrix.png",
)


# Runs in the test process and, as an extra first cell, in the notebook's kernel: both read the
# same 500 real digits (50 per class) saved once by the fixture, instead of parsing all 5,000.
FEW_DIGITS = """
import numpy as _np
from plif_jax.data import digits as _digits

_few = _np.load({path!r})
_digits.load_digits = lambda: (_few["images"], _few["labels"])
_digits.TRAIN_PER_CLASS = 40
"""


def tiny_config(cache_dir: str):
    config = common.get_config()
    config.dataset = "digits_events"
    config.num_epochs = 2
    config.steps_per_epoch = 3
    config.batch_size = 8
    config.eval_batch_size = 50  # 2 evaluation batches over the 100 test digits
    config.log_every_steps = 2
    config.progress_bar = False
    config.checkpoint.keep = 1
    config.data.T = 4
    config.data.cache_dir = cache_dir
    config.data.num_workers = 2
    config.model.channels = 4
    config.model.hidden = 16
    return config


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, jax_cache_dir, digits_npz):
    """The run, with the session's compilation cache, which the kernel shares: restoring the
    checkpoint rebuilds the same model, whose initialisers compile to the same programs."""
    base = tmp_path_factory.mktemp("tiny_run")
    with np.load(digits_npz) as f:  # the session's parsed copy of digits.load_digits()
        images, labels = f["images"], f["labels"]
    keep = np.concatenate([np.flatnonzero(labels == c)[:50] for c in range(10)])
    np.savez(base / "few_digits.npz", images=images[keep], labels=labels[keep])
    few_digits = FEW_DIGITS.format(path=str(base / "few_digits.npz"))
    workdir = base / "run"
    with pytest.MonkeyPatch.context() as mp, compilation_cache(jax_cache_dir):
        mp.setattr(digits, "load_digits", digits.load_digits)  # restored on exit
        mp.setattr(digits, "TRAIN_PER_CLASS", digits.TRAIN_PER_CLASS)
        exec(few_digits, {})
        summary = train.train_and_evaluate(tiny_config(str(base / "frames")), str(workdir))
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    return workdir, summary, few_digits, jax_cache_dir


def test_layer_taus_from_workdir_equal_the_runs_final_taus(tiny_run):
    workdir, summary, *_ = tiny_run
    model, _ = checkpoint.restore(workdir, "latest")
    taus = models.layer_taus(model)
    assert list(taus) == ["sn0", "sn1", "sn2", "sn3"]
    assert list(summary["tau"]) == list(taus)
    for name, neuron in models.spiking_layers(model):
        w = float(np.asarray(neuron.w[...]))
        assert taus[name] == pytest.approx(1.0 + math.exp(-w), rel=1e-12)
        assert taus[name] == pytest.approx(summary["tau"][name], rel=1e-6)
    # Training moved tau away from tau_0 = 2 in at least one layer.
    assert any(abs(t - 2.0) > 1e-6 for t in taus.values())


def test_tau_trajectories_of_the_run_end_at_its_final_taus(tiny_run):
    workdir, summary, *_ = tiny_run
    traj = analysis.tau_trajectories(workdir)
    assert list(traj) == ["sn0", "sn1", "sn2", "sn3"]
    for name in traj:
        epochs, taus = traj[name]
        np.testing.assert_array_equal(epochs, [0, 1])
        assert taus[-1] == pytest.approx(summary["tau"][name], rel=1e-6)
    # The paper's cosine schedule per epoch: lr(e) = 0.5 lr0 (1 + cos(pi e / 64)).
    lr_epochs, lrs = traj.lr
    np.testing.assert_array_equal(lr_epochs, [0, 1])
    np.testing.assert_allclose(lrs, [1e-3, 0.5e-3 * (1 + math.cos(math.pi / 64))], rtol=1e-6)


def test_notebook_runs_headless_and_writes_nontrivial_figures(tiny_run, monkeypatch):
    workdir, summary, few_digits, xla_cache = tiny_run
    monkeypatch.setenv("PLIF_WORKDIR", str(workdir))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for key, value in cache_env(xla_cache).items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), (
        "explore_tau.ipynb must be stored without outputs (clear them before committing)"
    )
    nb.cells.insert(0, nbformat.v4.new_code_cell(few_digits))
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=120,
        startup_timeout=120,  # a loaded CI machine can be slow to start the kernel
        resources={"metadata": {"path": str(NOTEBOOK.parent)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    text = "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.get("output_type") == "stream"
    )
    # The notebook reports the run's final tau per layer and its last test accuracy.
    for name, tau in summary["tau"].items():
        assert f"{name:>6}: tau = {tau:.4f}" in text, name
    assert f"test accuracy {summary['final_test_accuracy']:.4f} on 100 samples" in text
    # digits_events has no paper run: the overlay is drawn beside the nmnist network's main run.
    assert "paper run: A/NMNIST_init_tau_2.0_use_plif_True_use_max_pool_True_T_10_c_128_n_2" in text
    assert "NOT this run's setting" in text
    for name in FIGURES:
        path = workdir / "figures" / name
        assert path.exists(), f"{name} not written"
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and min(image.shape[:2]) >= 200, (name, image.shape)
        rgb = image[..., :3].reshape(-1, 3)
        # Non-trivial: not one flat colour, and more than a handful of distinct colours drawn.
        assert rgb.std() > 0.05, name
        assert len(np.unique(np.round(rgb * 255).astype(np.uint8), axis=0)) > 20, name
    assert sorted(p.name for p in (workdir / "figures").glob("*.png")) == sorted(FIGURES)
