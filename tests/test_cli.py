"""experiments/train.py: the XLA CPU flag it sets before JAX creates its backends."""

import os

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
