"""experiments/train.py: the XLA CPU flag it sets before JAX creates its backends."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from experiments import train as train_cli


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
        # The suite's LLVM optimisations are off (tests/conftest.py): they apply to the code XLA
        # emits, not to YNNPACK's precompiled kernels. (With jaxlib 0.10.x the compiled HLO text
        # is the same with and without the flag; what runs is compared either way.)
        env = dict(os.environ, XLA_FLAGS=xla_flags, JAX_PLATFORMS="cpu")
        out = tmp_path / f"{name}.npz"
        cmd = [sys.executable, str(root / "tests" / "e2e" / "ynn_grads_probe.py"), str(out)]
        running[name] = (subprocess.Popen(cmd, env=env, cwd=root), out)
    for name, (proc, _) in running.items():
        assert proc.wait(timeout=600) == 0, name
    return {name: dict(np.load(out)) for name, (_, out) in running.items()}


@pytest.mark.e2e
def test_ynn_flag_gives_the_default_kernels_gradients_on_the_paper_networks(tmp_path):
    # The train CLI turns XLA:CPU's YNNPACK fusions on (an experimental XLA path; other projects
    # report miscompiles in later jaxlib versions). Loss and every parameter gradient of the
    # paper's objective, on small versions of the paper's nets, must match XLA's default kernels.
    probes = _probes(tmp_path, {"default": "", "ynn": train_cli._YNN_FLAG})
    default, ynn = probes["default"], probes["ynn"]
    assert default.keys() == ynn.keys()
    assert len([k for k in default if k.endswith("/loss")]) == 5  # Fashion-MNIST's is MNIST's
    for key, want in default.items():
        got = ynn[key]
        scale = float(np.max(np.abs(want)))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1e-6), err_msg=key)
    # The comparison is not vacuous: gradients reach the first conv of every net (by path:
    # the static encoder's, else the first feature block's).
    for name in ("mnist", "nmnist", "dvsgesture"):
        convs = sorted(k for k in default if k.startswith(f"{name}/") and "['conv']['kernel']" in k)
        assert convs, (name, sorted(default))
        assert float(np.max(np.abs(default[convs[0]]))) > 0, convs[0]
