"""The docs' code runs: an API rename breaks this test, not the reader.

* Every ```python block of README.md and docs/tutorials/*.md is executed, each file's blocks in
  order in one namespace (a tutorial builds up across blocks), in a scratch directory.
* Every ```python block elsewhere in docs/ (how-tos and explanations: they need a trained run or
  real data) must compile, and each plif_jax name it imports or reads as ``module.attr...`` must
  exist.
* The config reference (docs/reference/config.md) is generated from configs/common.py's comments
  (docs/_ext/config_fields.py): every field of ``get_config()`` must be found there, with a comment.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pathlib
import re
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RUN = [ROOT / "README.md", *sorted((DOCS / "tutorials").glob("*.md"))]
CHECK = sorted(p for p in DOCS.rglob("*.md") if p not in RUN and "_build" not in p.parts)
_FENCE = re.compile(
    r"^(?P<fence>```+|~~~+)python[ \t]*\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.M | re.S
)


def python_blocks(path: pathlib.Path) -> list[str]:
    """The bodies of the file's fenced ```python blocks, in order."""
    return [m.group("body") for m in _FENCE.finditer(path.read_text())]


def test_snippet_files_found():
    assert python_blocks(ROOT / "README.md"), "README.md has no ```python block"
    tutorials = [p for p in RUN[1:] if python_blocks(p)]
    assert tutorials, "no tutorial in docs/tutorials has a ```python block"


@pytest.mark.parametrize("path", [p for p in RUN if python_blocks(p)], ids=lambda p: p.name)
def test_snippets_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": f"docs_snippet_{path.stem}"}
    for i, block in enumerate(python_blocks(path)):
        code = compile(block, f"{path.relative_to(ROOT)} (python block {i + 1})", "exec")
        exec(code, namespace)  # noqa: S102 - the docs' own code, run as a reader would


def test_readme_commands_are_what_ci_runs():
    """The README's test and docs commands are the ones .ci/run runs (CI adds only flags that
    change the output's form: --durations, -q)."""
    readme = (ROOT / "README.md").read_text()
    ci = [line.split("#")[0].strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "python -m pytest -q tests\n" in readme
    assert any(line.startswith("python -m pytest -q tests") for line in ci)
    docs = "sphinx-build -W --keep-going docs build/docs"
    assert docs in readme
    assert docs in [line.replace(" -q", "") for line in ci]


def _imported(tree: ast.AST) -> dict[str, str]:
    """name bound in the block -> the plif_jax module or object path it stands for."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("plif_jax"):
                    bound[alias.asname or alias.name.split(".")[0]] = (
                        alias.name if alias.asname else alias.name.split(".")[0]
                    )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("plif_jax"):
            for alias in node.names:
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _resolve(path: str):
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)  # AttributeError: the docs name something that is gone
        return obj
    raise ImportError(path)


def _chains(tree: ast.AST, bound: dict[str, str]) -> set[str]:
    """Every ``name.attr.attr`` read whose root is a plif_jax name, as a full dotted path."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts = []
            inner = node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in bound:
                out.add(".".join([bound[inner.id], *reversed(parts)]))
    return out


@pytest.mark.parametrize("path", [p for p in CHECK if python_blocks(p)], ids=lambda p: p.name)
def test_snippet_names_exist(path):
    for i, block in enumerate(python_blocks(path)):
        where = f"{path.relative_to(ROOT)} (python block {i + 1})"
        tree = ast.parse(block, where)
        bound = _imported(tree)
        for dotted in sorted(set(bound.values()) | _chains(tree, bound)):
            try:
                _resolve(dotted)
            except (AttributeError, ImportError) as e:
                raise AssertionError(f"{where}: {dotted} does not exist ({e})") from e


def _config_fields():
    spec = importlib.util.spec_from_file_location("config_fields", DOCS / "_ext/config_fields.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("config_fields", module)  # its dataclass looks itself up there
    spec.loader.exec_module(sys.modules["config_fields"])
    return sys.modules["config_fields"]


def test_config_reference_covers_every_field():
    from configs import common

    def leaves(config, prefix=""):
        for key, value in config.items():
            if hasattr(value, "items"):
                yield from leaves(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}"

    documented = {f.path: f for f in _config_fields().config_fields()}
    assert set(documented) == set(leaves(common.get_config()))
    silent = [path for path, f in documented.items() if not f.description]
    assert not silent, f"configs/common.py fields without a comment: {silent}"
    assert documented["data.dvsgesture_train"].section == "Data"
    assert "first_78_trials" in documented["data.dvsgesture_train"].description
