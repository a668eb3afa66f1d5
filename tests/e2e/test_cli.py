"""experiments/train.py: the XLA CPU flag it sets before JAX creates its backends."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import train as train_cli
from tests.support.runs import session_xla_flags

YNN_OFF = "--xla_cpu_experimental_ynn_fusion_type="  # XLA:CPU's own kernels


def test_ynn_flag_is_added_to_empty_xla_flags(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    train_cli.set_cpu_flags(True)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"


def test_ynn_flag_is_appended_to_other_flags_and_a_user_setting_wins(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    train_cli.set_cpu_flags(True)
    assert os.environ["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=4 --xla_cpu_experimental_ynn_fusion_type=dot,reduce"
    )
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")
    train_cli.set_cpu_flags(True)
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"


def test_noxla_cpu_ynn_leaves_xla_flags_alone(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    train_cli.set_cpu_flags(False)
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"
    monkeypatch.delenv("XLA_FLAGS")
    train_cli.set_cpu_flags(False)
    assert "XLA_FLAGS" not in os.environ


def _probes(tmp_path, flags: dict[str, str]) -> dict[str, dict]:
    """Runs the probe once per XLA_FLAGS value, the processes side by side (2 cores)."""
    root = pathlib.Path(__file__).resolve().parents[2]
    running = {}
    for name, xla_flags in flags.items():
        # The suite's settings (tests/conftest.py: LLVM optimisations off, the loop emitters)
        # apply to the code XLA emits around the fusions compared, not to YNNPACK's kernels.
        env = dict(os.environ, XLA_FLAGS=session_xla_flags(xla_flags), JAX_PLATFORMS="cpu")
        out = tmp_path / f"{name}.npz"
        cmd = [sys.executable, str(root / "tests" / "e2e" / "ynn_grads_probe.py"), str(out)]
        running[name] = (subprocess.Popen(cmd, env=env, cwd=root), out)
    for name, (proc, _) in running.items():
        assert proc.wait(timeout=600) == 0, name
    return {name: dict(np.load(out)) for name, (_, out) in running.items()}


@pytest.mark.e2e
def test_ynn_flag_gives_xlas_own_kernels_gradients_on_the_paper_networks(tmp_path):
    # The train CLI turns XLA:CPU's YNNPACK fusions on (an experimental XLA path; other projects
    # report miscompiles in later jaxlib versions). Loss and every parameter gradient of the
    # paper's objective, on small versions of the paper's nets, must match XLA's own kernels
    # (YNNPACK fusions off: an empty fusion type). Not against XLA's default: with jaxlib 0.10.x
    # the default already has the YNNPACK dot fusions, and its programs equal the flag's.
    probes = _probes(tmp_path, {"xla": YNN_OFF, "ynn": train_cli._YNN_FLAG})
    default, ynn = probes["xla"], probes["ynn"]
    assert default.keys() == ynn.keys()
    # The programs compared differ: YNNPACK fusions in every net with the flag, none without.
    fusions = {k: (int(default.pop(k)), int(ynn.pop(k))) for k in list(default) if k[:4] == "hlo/"}
    assert len(fusions) == 5 and all(off == 0 < on for off, on in fusions.values()), fusions
    assert len([k for k in default if k.endswith("/loss")]) == 5  # Fashion-MNIST's is MNIST's
    # float32 sums in another order: each gradient within 1e-4 of itself or 1e-5 of its net's
    # largest gradient (a time constant's gradient is a sum over every neuron of the layer that
    # nearly cancels: cifar10's 2.5e-7 moved by 7e-11, 2.8e-4 of itself; the conv kernels moved
    # by at most 4e-6 of the net's scale, 2026-12-03).
    scales = {}  # net -> its largest gradient (the loss is compared with its own scale)
    for key, want in default.items():
        net, what = key.split("/", 1)
        if what != "loss":
            scales[net] = max(scales.get(net, 0.0), float(np.max(np.abs(want))))
    for key, want in default.items():
        net, what = key.split("/", 1)
        scale = float(np.max(np.abs(want))) if what == "loss" else scales[net]
        atol = 1e-5 * max(scale, 1e-6)
        np.testing.assert_allclose(ynn[key], want, rtol=1e-4, atol=atol, err_msg=key)
    # The comparison is not vacuous: gradients reach the first conv of every net (by path:
    # the static encoder's, else the first feature block's).
    for name in ("mnist", "nmnist", "dvsgesture"):
        convs = sorted(k for k in default if k.startswith(f"{name}/") and "['conv']['kernel']" in k)
        assert convs, (name, sorted(default))
        assert float(np.max(np.abs(default[convs[0]]))) > 0, convs[0]
