"""The paper's shipped curves (plif_jax/analysis/paper_logs), their reader and
``experiments.compare``.

Expected values are the original repository's logs (fangwei123456/Parametric-Leaky-Integrate-and-
Fire-Spiking-Neuron@f644ff6, ``logs/``) as the shipped CSVs hold them, and the README tables there.
The compare tests write a workdir through the trainer's own writers (``config.to_json`` as
``train.record_run_info`` does, and ``metrics.MetricWriter`` with the trainer's record keys) and
run the real CLI;
``tests/analysis/test_notebook.py`` draws the same overlay from a real training run.
"""

import csv
import dataclasses
import io
import json
import os
import pathlib
import subprocess
import sys

import matplotlib.image
import numpy as np
import pytest

from configs import cifar10dvs, dvsgesture, fashion_mnist, mnist, nmnist, quickstart
from experiments import compare as compare_cli
from plif_jax import errors
from plif_jax.analysis import paper_compare, paper_runs
from plif_jax.training import metrics

ROOT = pathlib.Path(__file__).resolve().parents[2]
FMNIST_A = "FashionMNIST_init_tau_2.0_use_plif_True_use_max_pool_True_T_8_detach_reset_True"
NMNIST_A = (
    "NMNIST_init_tau_2.0_use_plif_True_use_max_pool_True_T_10_c_128_n_2_split_by_number_"
    "normalization_None_detach_reset_True"
)


def test_fashion_mnist_main_run_holds_the_logged_values():
    run = paper_runs.load(FMNIST_A)
    assert run.key == f"A/{FMNIST_A}" and run.num_epochs == 1024
    np.testing.assert_array_equal(run.curves.epochs, np.arange(1024))
    # Test accuracy after epochs 0-2 and the best (94.38 % first reached at epoch 809).
    assert run.curves.test_accuracy[:3].tolist() == [0.8896, 0.9046, 0.911]
    assert run.curves.test_accuracy.max() == 0.9438
    assert int(np.argmax(run.curves.test_accuracy)) == 809
    assert run.curves.val_accuracy is None
    assert list(run.curves.tau) == ["sn0", "sn1", "sn2", "sn3"]
    taus = run.curves.tau
    assert [taus[k][0] for k in taus] == [1.7599, 1.85933, 2.09148, 2.26912]  # after epoch 0
    assert [taus[k][-1] for k in taus] == [1.74416, 1.7764, 29.7233, 3.4319]  # after epoch 1023
    # The logged tau is 1 + exp(-w), both to 6 significant digits.
    for layer in taus:
        np.testing.assert_allclose(taus[layer], 1 + np.exp(-run.w[layer]), rtol=2e-5)


def test_protocol_b_run_has_validation_accuracy():
    run = paper_runs.load("B/val_0.15_" + FMNIST_A)
    assert run.settings.protocol == "B" and run.settings.val_ratio == 0.15
    assert run.curves.test_accuracy[0] == 0.8817
    assert run.curves.val_accuracy[:2].tolist() == [0.887678, 0.908141]
    assert run.curves.tau["sn3"][0] == 2.17176


def test_every_shipped_run_parses_and_agrees_with_the_index():
    runs = paper_runs.list_runs()
    assert len(runs) == 49 and len(paper_runs.list_runs("B")) == 6
    assert len({paper_runs.parse_name(n) for n in runs}) == 49  # one run per setting
    index_csv = (paper_runs._logs_dir() / "index.csv").read_text(encoding="utf-8")
    index = {row["run"]: row for row in csv.DictReader(io.StringIO(index_csv))}
    assert sorted(index) == sorted(runs)
    for name in runs:
        run, row = paper_runs.load(name), index[name]
        assert row["protocol"] == run.settings.protocol
        assert run.num_epochs == int(row["epochs_logged"]), name
        acc = run.curves.test_accuracy
        # The index holds the float32 TensorBoard values; the CSVs 6 significant digits.
        assert acc.max() == pytest.approx(float(row["best_test_accuracy"]), abs=5e-7), name
        assert int(np.argmax(acc)) == int(row["first_epoch_at_best"]), name
        assert acc[0] == pytest.approx(float(row["test_acc_epoch0"]), abs=5e-7), name
        assert len(run.curves.tau) == (len(run.w) if run.settings.neuron == "plif" else 0)


def test_run_names_parse_into_settings():
    s = paper_runs.parse_name(f"A/{FMNIST_A}")
    assert s == paper_runs.RunSettings(
        dataset="fashion_mnist", protocol="A", neuron="plif", init_tau=2.0, pooling="max", T=8
    )
    s = paper_runs.parse_name(
        "val_0.15_CIFAR10DVS_init_tau_16.0_use_plif_False_use_max_pool_False_T_20_c_128_n_4_"
        "split_by_time_normalization_None_detach_reset_True"
    )
    assert (s.dataset, s.protocol, s.neuron, s.init_tau, s.pooling, s.T) == (
        "cifar10dvs", "B", "lif", 16.0, "avg", 20
    )  # fmt: skip
    assert (s.channels, s.number_layer, s.split_by, s.normalization, s.val_ratio) == (
        128, 4, "time", "None", 0.15
    )  # fmt: skip
    with pytest.raises(ValueError, match="not a paper run name"):
        paper_runs.parse_name("ImageNet_init_tau_2.0_use_plif_True_use_max_pool_True_T_8")


def _as_saved(config):
    """The config as a workdir's config.json holds it (what compare reads back)."""
    return json.loads(config.to_json(sort_keys=True))


@pytest.mark.parametrize(
    "module, overrides, expected",
    [
        (fashion_mnist, {}, FMNIST_A),
        (
            fashion_mnist,
            {"neuron.kind": "lif"},
            FMNIST_A.replace("use_plif_True", "use_plif_False"),
        ),
        (fashion_mnist, {"neuron.init_tau": 16.0}, FMNIST_A.replace("tau_2.0", "tau_16.0")),
        (fashion_mnist, {"model.pooling": "avg"}, FMNIST_A.replace("pool_True", "pool_False")),
        (fashion_mnist, {"protocol": "B"}, f"val_0.15_{FMNIST_A}"),
        (mnist, {}, FMNIST_A.replace("FashionMNIST", "MNIST")),
        (nmnist, {}, NMNIST_A),
        (nmnist, {"protocol": "B", "data.T": 20}, "val_0.15_" + NMNIST_A.replace("T_10", "T_20")),
        (nmnist, {"model.number_layer": 4}, NMNIST_A.replace("n_2", "n_4")),
        (cifar10dvs, {"data.split_by": "time"}, None),
        (dvsgesture, {}, None),
    ],
)
def test_match_finds_the_paper_run_of_a_configs_setting(module, overrides, expected):
    config = module.get_config()
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    run = paper_runs.match(_as_saved(config))
    assert run.settings == paper_runs.settings_from_config(config)
    if expected is not None:
        assert run.name == expected
    if not overrides:  # the dataset's paper config is the paper's main run
        assert run.name == paper_runs.main_run(config.dataset).name


def test_match_without_a_paper_run_is_a_user_error_naming_the_difference():
    config = fashion_mnist.get_config()
    config.data.T = 4
    with pytest.raises(paper_runs.NoPaperRunError, match=r"nearest, FashionMNIST.*T 4 \(paper 8\)"):
        paper_runs.match(config)
    with pytest.raises(errors.UserError, match=r"no run on digits_events .*nmnist network"):
        paper_runs.match(quickstart.get_config())
    with pytest.raises(paper_runs.NoPaperRunError, match="did you mean " + FMNIST_A):
        paper_runs.load(FMNIST_A.replace("T_8", "T_9"))


def test_protocol_b_comparison_puts_validation_accuracy_beside_the_papers():
    run = paper_runs.load("val_0.15_" + FMNIST_A)
    taus = {k: v[:2] * 1.01 for k, v in run.curves.tau.items()}
    ours = paper_runs.Curves(
        "ours", np.arange(2), np.array([0.88, 0.9]), np.array([0.89, 0.91]), taus
    )
    cols = paper_compare.compare(ours, run).columns()
    assert cols["val_accuracy_paper"].tolist() == [0.887678, 0.908141]
    assert cols["val_accuracy_ours"].tolist() == [0.89, 0.91]
    np.testing.assert_allclose(cols["test_accuracy_diff"], [0.88 - 0.8817, 0.9 - 0.9038])
    header = paper_compare.compare(ours, run).format_table().splitlines()[0].split()
    assert header[:8] == ["epoch", "test", "ours", "paper", "diff", "(pt)", "val", "ours"]


def test_compare_notes_why_tau_is_not_compared():
    ours = paper_runs.Curves("ours", np.arange(2), np.array([0.5, 0.6]), None, {})
    lif = paper_runs.load(FMNIST_A.replace("use_plif_True", "use_plif_False"))
    assert paper_compare.compare(ours, lif).notes == (
        "tau not compared: neither run learned tau (LIF)",
    )
    deep = paper_runs.load(NMNIST_A.replace("n_2", "n_4"))  # 6 PLIF layers
    four = dict.fromkeys(["sn0", "sn1", "sn2", "sn3"], np.array([2.0, 2.0]))
    cmp = paper_compare.compare(dataclasses.replace(ours, tau=four), deep)
    assert cmp.layers == () and "ours has 4 PLIF layers, the paper's run 6" in cmp.notes[0]


# The per-epoch values our tiny run logs (written through the trainer's MetricWriter).
OURS_TEST = [0.8512, 0.8801, 0.8954]
OURS_TAU = {"sn0": [1.81, 1.70, 1.62], "sn1": [1.90, 1.75, 1.66], "sn2": [2.05, 2.3, 2.6]}
OURS_TAU["sn3"] = [2.2, 2.5, 2.8]


def _write_workdir(workdir: pathlib.Path, config) -> None:
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json(indent=2, sort_keys=True))
    writer = metrics.MetricWriter(str(workdir))
    step = 0
    for epoch, acc in enumerate(OURS_TEST):
        step += 4
        writer.write(epoch=epoch, step=step, scalars={"train/loss": 0.05, "lr": 1e-3})
        scalars = {"train/epoch_loss": 0.05, "test/accuracy": acc, "test/loss": 0.02, "lr": 1e-3}
        scalars.update({f"tau/{k}": v[epoch] for k, v in OURS_TAU.items()})
        scalars.update({f"firing_rate/{k}": 0.1 for k in OURS_TAU})
        writer.write(epoch=epoch, step=step, scalars=scalars)
    writer.close()


@pytest.mark.e2e
def test_compare_cli_prints_and_writes_the_table_and_overlay(tmp_path):
    config = fashion_mnist.get_config()
    config.model.channels = 16  # matched all the same (static names carry no width), noted
    workdir = tmp_path / "run"
    _write_workdir(workdir, config)
    env = dict(os.environ, JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", f"--workdir={workdir}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"paper: A/{FMNIST_A} (1024 epochs logged" in out
    assert (
        "note: not the paper's settings (configs/fashion_mnist.py): model.channels 16 (paper 128)"
        in out
    )
    # epoch 0: ours 85.12 %, paper 88.96 %, -3.84 points; tau sn0 ours 1.810, paper 1.760.
    row0 = next(line.split() for line in out.splitlines() if line.strip().startswith("0 "))
    assert row0[:4] == ["0", "85.12", "88.96", "-3.84"]
    assert row0[4:7] == ["1.810", "/", "1.760"]
    assert "best test accuracy over epochs 0-2: ours 89.54%, paper 91.10%" in out
    assert "(the paper's best over all 1024 epochs: 94.38%)" in out

    with open(workdir / compare_cli.TABLE_NAME, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert [float(r["test_accuracy_paper"]) for r in rows] == [0.8896, 0.9046, 0.911]
    assert [float(r["test_accuracy_ours"]) for r in rows] == OURS_TEST
    for r, ours, paper in zip(rows, OURS_TEST, [0.8896, 0.9046, 0.911], strict=True):
        assert float(r["test_accuracy_diff"]) == pytest.approx(ours - paper, abs=1e-12)
    assert [float(r["tau_sn2_paper"]) for r in rows] == [2.09148, 2.40517, 2.74552]
    assert [float(r["tau_sn3_ours"]) for r in rows] == OURS_TAU["sn3"]
    assert "val_accuracy_ours" not in rows[0]

    image = matplotlib.image.imread(workdir / compare_cli.FIGURE_NAME)
    assert image.ndim == 3 and min(image.shape[:2]) >= 300
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std() > 0.05 and len(np.unique(np.round(rgb * 255), axis=0)) > 50


def test_compare_with_a_chosen_paper_run_notes_the_other_setting(tmp_path):
    config = quickstart.get_config()  # digits_events: no paper run of its own
    config.data.T, config.model.channels = 8, 8  # fixed here: the quick start's may change
    workdir = tmp_path / "quick"
    _write_workdir(workdir, config)
    with pytest.raises(paper_runs.NoPaperRunError, match="digits_events"):
        compare_cli.compare_workdir(str(workdir))
    cmp, paper = compare_cli.compare_workdir(str(workdir), paper_run=f"A/{NMNIST_A}")
    assert paper.name == NMNIST_A and cmp.layers == ("sn0", "sn1", "sn2", "sn3")
    assert cmp.notes[0].startswith(
        "not the paper run's setting: dataset digits_events (paper nmnist)"
    )
    assert "T 8 (paper 10); channels 8 (paper 128)" in cmp.notes[0]
    assert len(cmp.notes) == 1  # no config diff against another dataset's paper config
    np.testing.assert_array_equal(cmp.columns()["tau_sn1_paper"], paper.curves.tau["sn1"][:3])
    assert (workdir / compare_cli.FIGURE_NAME).exists()


@pytest.mark.e2e
def test_compare_cli_bad_workdir_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.compare", f"--workdir={tmp_path / 'nope'}"],
        cwd=ROOT,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and lines[0].startswith("error: ")
        and "config.json does not exist" in lines[0]
    )


def test_damaged_or_empty_metrics_are_user_errors_naming_the_file(tmp_path):
    workdir = tmp_path / "run"
    _write_workdir(workdir, fashion_mnist.get_config())
    ours = paper_compare.curves_from_workdir(workdir)
    assert ours.label == "run" and ours.test_accuracy.tolist() == OURS_TEST
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "test/acc')  # a run killed mid-write
    with pytest.raises(errors.DataError, match=r"metrics.jsonl:7 is not valid JSON.*delete"):
        paper_compare.curves_from_workdir(workdir)
    (workdir / "metrics.jsonl").write_text('{"epoch": 0, "step": 4, "train/loss": 0.1}\n')
    with pytest.raises(errors.DataError, match="no finished epoch yet"):
        paper_compare.curves_from_workdir(workdir)


def test_config_differences_list_only_what_changes_learning():
    config = fashion_mnist.get_config()
    config.num_epochs = 3  # run length: not a difference
    config.data.root = "/data"
    config.optim.t_max = 4
    config.batch_size = 32
    assert compare_cli.config_differences(_as_saved(config)) == [
        "batch_size 32 (paper 16)",
        "optim.t_max 4 (paper 64)",
    ]
