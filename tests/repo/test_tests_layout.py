"""The test suite's own layout: no test module imports another test module (shared fixtures are
in ``conftest.py`` files, shared helpers in ``tests/support``), and conftest files are not
imported either."""

from __future__ import annotations

import ast
import os

from tests.support.runs import ROOT

TESTS = os.path.join(ROOT, "tests")


def _test_modules() -> dict[str, str]:
    """``{dotted name: path}`` of every module under tests/."""
    out = {}
    for dirpath, _, files in os.walk(TESTS):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, ROOT)[: -len(".py")]
                out[rel.replace(os.sep, ".")] = path
    return out


def _imported(path: str) -> set[str]:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _is_test_module_or_conftest(name: str) -> bool:
    last = name.rsplit(".", 1)[-1]
    return name.startswith("tests.") and (last.startswith("test_") or last == "conftest")


def test_no_test_module_imports_another_test_module_or_a_conftest():
    offenders = {
        name: sorted(n for n in _imported(path) if _is_test_module_or_conftest(n))
        for name, path in _test_modules().items()
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, (
        f"{offenders}: move shared fixtures to a conftest.py and helpers to tests/support/"
    )


def test_the_check_sees_both_import_forms(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "from tests.training.test_train import tiny_config\n"
        "from tests.training import test_train\n"
        "import tests.conftest\n"
        "from tests.support.runs import tiny_config\n"
    )
    found = sorted(n for n in _imported(str(module)) if _is_test_module_or_conftest(n))
    assert found == ["tests.conftest", "tests.training.test_train"]
