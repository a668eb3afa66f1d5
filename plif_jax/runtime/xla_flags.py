"""XLA flags the command-line tools set before JAX creates its backends; CPU-only settings.

The YNNPACK flag is an experimental XLA:CPU flag: a jaxlib that does not know it aborts at
start-up ("Unknown flags in XLA_FLAGS"), whatever the backend. So it is set only for a process
that will run on the CPU backend alone (:func:`cpu_only_process`) and on the jaxlib versions it
was measured with (:data:`YNN_JAXLIB`); :func:`set_cpu_flags` says what it did.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import pkgutil
from collections.abc import Mapping

# XLA:CPU's YNNPACK fusions for dots, convolutions and reductions: on by default in the train CLI
# (experiments/train.py, ``--xla_cpu_ynn``); BENCHMARKS.md has the figures. With jaxlib 0.10.x
# XLA's default already forms the YNNPACK dot fusions: a compiled program is the same with and
# without this flag (2026-12-03; an empty fusion type turns them off: tests/e2e/test_cli.py).
YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot,reduce"
# jaxlib (major, minor) versions whose XLA has the flag (measured with 0.10.x).
YNN_JAXLIB = ((0, 10),)


def accelerator_plugins() -> list[str]:
    """Installed JAX accelerator backends: ``jax_plugins.*`` (CUDA, ROCm...) and libtpu."""
    found = []
    spec = importlib.util.find_spec("jax_plugins")
    if spec is not None and spec.submodule_search_locations:
        found += [m.name for m in pkgutil.iter_modules(list(spec.submodule_search_locations))]
    if importlib.util.find_spec("libtpu") is not None:
        found.append("libtpu")
    return found


def cpu_only_process(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether JAX will run on its CPU backend only (decided before JAX loads).

    ``JAX_PLATFORMS`` (or the older ``JAX_PLATFORM_NAME``) decides when set; otherwise the
    process is CPU-only when no accelerator plugin is installed.
    """
    platforms = environ.get("JAX_PLATFORMS") or environ.get("JAX_PLATFORM_NAME") or ""
    if platforms.strip():
        return all(p.strip().lower() == "cpu" for p in platforms.split(",") if p.strip())
    return not accelerator_plugins()


def jaxlib_version() -> tuple[int, int] | None:
    """The installed jaxlib's (major, minor), without importing it (None where unknown)."""
    try:
        major, minor = importlib.metadata.version("jaxlib").split(".")[:2]
        return int(major), int(minor)
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def set_cpu_flags(ynn: bool, environ: dict | None = None) -> str:
    """Adds the YNNPACK fusion flag to ``XLA_FLAGS`` when it is safe (module docstring).

    Must run before the first computation. A flag the user already set in ``XLA_FLAGS`` wins.

    Returns:
      One line saying what was done (the train CLI logs it).
    """
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "")
    if not ynn:
        return "YNNPACK flag off (--noxla_cpu_ynn)"
    if "xla_cpu_experimental_ynn_fusion_type" in current:
        return "YNNPACK flag as given in XLA_FLAGS"
    if not cpu_only_process(env):
        return (
            "YNNPACK flag not set: an accelerator backend may run (installed: "
            f"{', '.join(accelerator_plugins()) or 'none'}; JAX_PLATFORMS="
            f"{env.get('JAX_PLATFORMS', '')!r}); it is an XLA:CPU flag"
        )
    version = jaxlib_version()
    if version not in YNN_JAXLIB:
        return f"YNNPACK flag not set: jaxlib {version} is not one it was measured with"
    env["XLA_FLAGS"] = f"{current} {YNN_FLAG}".strip()
    return f"YNNPACK flag set: {YNN_FLAG}"
