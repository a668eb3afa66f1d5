"""The run config's fields, read from ``configs/common.py`` itself: its comments are the docs.

No Sphinx here (``tests/repo/test_docs_snippets.py`` imports it): :func:`config_fields` pairs each
``config.<path> = <default>`` line of ``get_config`` with the comment on that line and the comment
lines right above it, and :func:`dataset_overrides` lists what each ``configs/<name>.py`` changes.
``plif_docs.py`` turns both into tables at build time, so the reference cannot drift from the code.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import io
import pathlib
import re
import tokenize
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMMON = ROOT / "configs" / "common.py"
_SECTION = re.compile(r"^#\s*-{3}\s*(?P<name>[^-].*?)\s*-*$")


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: its dotted path, section, default (as Python repr) and description."""

    path: str
    section: str
    default: str
    description: str


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """Full-line comments and end-of-line comments, by line number (text without ``#``)."""
    full, inline = {}, {}
    lines = source.splitlines()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        row, col = tok.start
        target = full if not lines[row - 1][:col].strip() else inline
        target[row] = tok.string
    return full, inline


def _dotted(node: ast.AST) -> str | None:
    """``config.a.b`` -> ``a.b``; None for anything else."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "config" and parts:
        return ".".join(reversed(parts))
    return None


def _comment_above(row: int, full: dict[int, str]) -> list[str]:
    """The contiguous full-line comments right above ``row``, section headers excluded."""
    out = []
    row -= 1
    while row in full and not _SECTION.match(full[row]) and set(full[row]) - set("# -"):
        out.append(full[row].lstrip("#").strip())
        row -= 1
    return list(reversed(out))


def _default(node: ast.expr, source: str) -> str:
    """The default as written; a placeholder reads ``None (type)``."""
    text = ast.get_source_segment(source, node) or ""
    placeholder = re.fullmatch(r"config_dict\.placeholder\((\w+)\)", text)
    return f"None ({placeholder.group(1)})" if placeholder else text


def config_fields(path: pathlib.Path = COMMON) -> list[Field]:
    """Every leaf field ``get_config`` in ``path`` sets, in source order, with its comments."""
    source = path.read_text()
    full, inline = _comments(source)
    headers = {row: m.group("name") for row, text in full.items() if (m := _SECTION.match(text))}
    fields = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.FunctionDef) and node.name == "get_config"):
            continue
        for stmt in node.body:
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                continue
            name = _dotted(stmt.targets[0])
            value = ast.get_source_segment(source, stmt.value) or ""
            if name is None or value.endswith("ConfigDict()"):
                continue
            above = [row for row in headers if row < stmt.lineno]
            section = headers[max(above)] if above else ""
            words = _comment_above(stmt.lineno, full)
            if stmt.lineno in inline:
                words.append(inline[stmt.lineno].lstrip("#").strip())
            fields.append(Field(name, section, _default(stmt.value, source), " ".join(words)))
    return fields


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in config.items():
        if hasattr(value, "items"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def dataset_overrides() -> dict[str, dict[str, Any]]:
    """``configs/<name>.py`` -> the fields whose value differs from ``configs/common.py``."""
    common = _flat(importlib.import_module("configs.common").get_config())
    out = {}
    for path in sorted((ROOT / "configs").glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        values = _flat(importlib.import_module(f"configs.{path.stem}").get_config())
        out[path.stem] = {k: v for k, v in values.items() if common.get(k, object()) != v}
    return out
