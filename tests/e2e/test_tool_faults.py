"""The tools on directories that hold no run, another program's files or a read-only run, and the
split mistakes of protocol B: one ``error: ...`` line and exit 2, or (a tool's optional output
that cannot be written) the result printed and the unwritten files named. In-process."""

from __future__ import annotations

import errno
import json
import os
import pathlib

import numpy as np
import pytest

from configs import quickstart
from experiments import compare as compare_cli
from experiments import export_nir
from plif_jax import cli, errors
from plif_jax.analysis import paper_compare
from plif_jax.data import accuracy_b_split
from plif_jax.data.loader import BatchSource
from plif_jax.training import metrics

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NMNIST_A = (
    "NMNIST_init_tau_2.0_use_plif_True_use_max_pool_True_T_10_c_128_n_2_split_by_number_"
    "normalization_None_detach_reset_True"
)


def _write_workdir(workdir: pathlib.Path, config) -> None:
    """A run's config.json and three epochs of metrics.jsonl (what compare reads)."""
    workdir.mkdir(parents=True)
    (workdir / "config.json").write_text(config.to_json(indent=2, sort_keys=True))
    writer = metrics.MetricWriter(str(workdir))
    for epoch, acc in enumerate((0.85, 0.88, 0.9)):
        scalars = {"test/accuracy": acc, "test/loss": 0.02, "lr": 1e-3}
        scalars.update({f"tau/sn{i}": 2.0 + 0.1 * epoch for i in range(4)})
        writer.write(epoch=epoch, step=4 * (epoch + 1), scalars=scalars)
    writer.close()


def _one_line(capsys, call) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as stop:
        cli.run_plain(call)
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in captured.err, captured.err
    return stop.value.code, err[0], captured.out


def test_val_ratio_leaving_no_validation_sample_is_a_config_error():
    labels = np.repeat(np.arange(10), 40)
    for ratio in (0.0, 0.02):  # 0.02 * 40 < 1: still no sample per class
        with pytest.raises(errors.ConfigError) as err:
            accuracy_b_split(labels, ratio)
        assert f"config.data.val_ratio={ratio!r} leaves protocol B no validation sample" in str(
            err.value
        )
        assert "at least 0.025" in str(err.value) and "--config.protocol=A" in str(err.value)
    _, val = accuracy_b_split(labels, 0.025)
    assert len(val) == 10


def test_a_split_without_samples_is_a_data_error():
    with pytest.raises(errors.DataError, match="nmnist/test: the split holds no samples"):
        BatchSource(name="nmnist/test", labels=np.zeros(0), fetch=None, batch_size=4, train=False)


@pytest.mark.parametrize("kind", ["missing", "empty", "foreign", "a file"])
def test_export_nir_on_a_directory_without_a_run_is_one_line(tmp_path, capsys, kind):
    workdir = tmp_path / "w"
    if kind == "empty":
        workdir.mkdir()
    elif kind == "foreign":
        (workdir / "checkpoints").mkdir(parents=True)
        (workdir / "checkpoints" / "config.json").write_text('{"lr": 1}')
        (workdir / "checkpoints" / "model.json").write_text("[]")
    elif kind == "a file":
        workdir.write_text("not a directory")
    status, line, _ = _one_line(capsys, lambda: export_nir.main([f"--workdir={workdir}"]))
    assert status == 2
    if kind == "foreign":
        assert line.startswith(f"error: {workdir}/checkpoints does not hold a plif_jax run's")
        assert "config.json: 'dataset'" in line and "model.json: 'name'" in line
    else:
        assert line.startswith(f"error: {workdir}/checkpoints/config.json not found: ")
        assert "is not a plif_jax run directory" in line


@pytest.mark.usefixtures("fast")
def test_export_nir_that_cannot_write_prints_its_check_and_names_the_path(
    baseline, capsys, monkeypatch
):
    src, _ = baseline
    out = os.path.join(src, "checkpoints", "model.nir")
    import nir

    real_write = nir.write

    def write(path, graph):
        if os.fspath(path) == out:  # the run's folder is read-only
            raise OSError(errno.EROFS, "Unable to create file (errno = 30)")
        real_write(path, graph)

    monkeypatch.setattr(nir, "write", write)
    status, line, stdout = _one_line(
        capsys, lambda: export_nir.main([f"--workdir={src}", "--no-generic"])
    )
    assert status == 2
    assert line.startswith(f"error: cannot write {out}: read-only filesystem (")
    assert "the graph was checked above but not saved; pass --out" in line
    assert "checked a temporary copy" in stdout
    assert "imported graph equals the checkpoint (confusion matrix): True" in stdout
    assert not os.path.exists(out)


def test_compare_on_a_read_only_run_prints_the_table_and_names_the_unwritten(tmp_path, monkeypatch):
    config = quickstart.get_config()
    workdir = tmp_path / "quick"
    _write_workdir(workdir, config)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(args[-1]))

    monkeypatch.setattr(paper_compare.Comparison, "write_csv", read_only)
    monkeypatch.setattr(paper_compare, "plot_comparison", read_only)
    unwritten: dict[str, str] = {}
    cmp, paper = compare_cli.compare_workdir(
        str(workdir), paper_run=f"A/{NMNIST_A}", unwritten=unwritten
    )
    lines = compare_cli._summary_lines(str(workdir), cmp, paper, unwritten)
    table = os.path.join(workdir, compare_cli.TABLE_NAME)
    assert f"table: not written, cannot write {table}: read-only filesystem (" in lines[-2]
    assert lines[-1].startswith("figure: not written, cannot write ")
    assert any(line.startswith("best test accuracy over epochs 0-") for line in lines)
    with pytest.raises(OSError):  # a caller that asks for no record gets the error itself
        compare_cli.compare_workdir(str(workdir), paper_run=f"A/{NMNIST_A}")


@pytest.mark.parametrize("content", ['{"lr": 1}', "[1, 2]"])
def test_compare_on_another_programs_config_is_a_data_error(tmp_path, content):
    (tmp_path / "config.json").write_text(content)
    with pytest.raises(errors.DataError, match="is not a plif_jax run's config"):
        compare_cli.read_config(str(tmp_path))


def _first_notebook_cell() -> str:
    nb = json.loads(pathlib.Path(ROOT, "experiments", "explore_tau.ipynb").read_text())
    return "".join(next(c for c in nb["cells"] if c["cell_type"] == "code")["source"])


def test_notebook_on_a_folder_without_a_run_is_its_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PLIF_WORKDIR", str(tmp_path))
    with pytest.raises(errors.NoCheckpointError) as err:
        exec(compile(_first_notebook_cell(), "cell 1", "exec"), {})
    assert str(err.value).startswith(f"{tmp_path} holds no training run (no checkpoints/")
    assert cli.error_line(err.value).count("\n") == 0


def test_notebook_on_a_read_only_run_writes_its_figures_elsewhere(tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "config.json").write_text("{}")
    monkeypatch.setenv("PLIF_WORKDIR", str(tmp_path))
    real_mkdir = pathlib.Path.mkdir

    def mkdir(self, *args, **kwargs):
        if self == tmp_path / "figures":
            raise OSError(errno.EROFS, "Read-only file system", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    namespace: dict = {}
    exec(compile(_first_notebook_cell(), "cell 1", "exec"), namespace)
    out = capsys.readouterr().out
    assert f"cannot write {tmp_path / 'figures'} (Read-only file system): the figures go to" in out
    assert namespace["FIGURES"] != tmp_path / "figures" and namespace["FIGURES"].is_dir()


def test_a_network_too_deep_for_its_frames_names_the_layers_to_use():
    from plif_jax.models import options

    with pytest.raises(errors.ConfigError) as err:
        options.resolve("nmnist", input_size=34, number_layer=8, T=8, channels=2)
    assert str(err.value) == (
        "input_size 34 is too small for 8 2x2 poolings of 'nmnist'; use input_size >= 256, or "
        "at most 5 (--config.model.number_layer=5)"
    )
