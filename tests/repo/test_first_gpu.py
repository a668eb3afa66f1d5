"""benchmarks.first_gpu, the first-GPU command: what can be checked without a GPU.

Its full run on CPU at toy size (``--platform cpu --tiny``) was done by hand (BENCHMARKS.md);
here: the argument handling, the plan lookup and the synthetic DVS128 Gesture layout.
"""

import json
import os

import numpy as np
import pytest

from benchmarks import first_gpu


def test_arguments_default_to_every_net_on_cuda_and_refuse_unknown_ones(capsys):
    args = first_gpu.parse_args([])
    assert args.platform == "cuda" and len(args.nets) == 6 and args.cli_steps == 300
    with pytest.raises(SystemExit) as e:
        first_gpu.parse_args(["--nets", "imagenet"])
    assert e.value.code == 2 and "imagenet" in capsys.readouterr().err


def test_plan_row_projects_the_paper_run_from_the_plan_entry(tmp_path):
    path = tmp_path / "plan.json"
    entry = {"ok": True, "batch": 16, "bound": {"step_s": 0.01}, "memory": {"peak": 123}}
    key = "h200|dvsgesture|train|float32|plain|k1|loop|dev1"
    path.write_text(json.dumps({"entries": {key: entry}}))
    row = first_gpu.plan_row(str(path), "h200", "dvsgesture", "float32")
    assert row["projected_1024_epochs_train_s"] == pytest.approx(1024 * (1176 // 16) * 0.01)
    assert first_gpu.plan_row(str(path), "h200", "dvsgesture", "bfloat16") is None
    assert first_gpu.plan_row(str(tmp_path / "none.json"), "h200", "mnist", "float32") is None


def test_synthetic_dvsgesture_has_tonics_layout(tmp_path):
    first_gpu.write_synthetic_dvsgesture(str(tmp_path), n_train=12, n_test=5)
    base = tmp_path / "DVSGesture"
    for split in ("ibmGestureTrain", "ibmGestureTest"):
        assert (base / f"{split}.tar.gz").exists()
        files = sorted((base / split).glob("user*/*.npy"))
        assert len(files) == 100  # tonic's completeness check wants >= 100 files
        events = np.load(files[0])
        assert events.shape[1] == 4 and np.all(np.diff(events[:, 3]) >= 0)
        assert set(np.unique(events[:, 2])) <= {0.0, 1.0} and events[:, :2].max() < 128
    assert os.path.basename(files[0].parent).startswith("user01_")
