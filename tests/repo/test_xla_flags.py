"""The XLA:CPU-only settings never reach another backend (plif_jax.runtime.xla_flags)."""

from plif_jax.runtime import xla_flags


def test_the_ynn_flag_is_set_for_a_cpu_only_process():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    assert xla_flags.set_cpu_flags(True, env).startswith("YNNPACK flag set")
    assert env["XLA_FLAGS"] == f"--xla_dump_to=/tmp/x {xla_flags.YNN_FLAG}"


def test_the_ynn_flag_never_reaches_an_accelerator_process(monkeypatch):
    for platforms in ("cuda", "cpu,cuda", "tpu"):
        env = {"JAX_PLATFORMS": platforms}
        assert "not set" in xla_flags.set_cpu_flags(True, env)
        assert "XLA_FLAGS" not in env
    # JAX_PLATFORMS unset: an installed accelerator plugin may be picked.
    monkeypatch.setattr(xla_flags, "accelerator_plugins", lambda: ["xla_cuda12"])
    env = {}
    line = xla_flags.set_cpu_flags(True, env)
    assert "XLA_FLAGS" not in env and "xla_cuda12" in line
    assert not xla_flags.cpu_only_process({})
    monkeypatch.setattr(xla_flags, "accelerator_plugins", lambda: [])
    assert xla_flags.cpu_only_process({})


def test_the_ynn_flag_is_not_set_on_a_jaxlib_it_was_not_measured_with(monkeypatch):
    monkeypatch.setattr(xla_flags, "jaxlib_version", lambda: (0, 12))
    env = {"JAX_PLATFORMS": "cpu"}
    assert "jaxlib (0, 12)" in xla_flags.set_cpu_flags(True, env)
    assert "XLA_FLAGS" not in env


def test_off_or_given_by_the_user_leaves_xla_flags_alone():
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=dot"}
    assert "as given" in xla_flags.set_cpu_flags(True, env)
    assert env["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    env = {"JAX_PLATFORMS": "cpu"}
    assert "off" in xla_flags.set_cpu_flags(False, env) and "XLA_FLAGS" not in env
