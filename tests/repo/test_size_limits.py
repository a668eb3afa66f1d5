"""The limits CI enforces on the source: no tracked ``.py`` file over 400 lines, no function over
80 lines of code (lines that are not blank, not a comment and not part of a docstring).

What is over a limit today is listed in ``OVER_LIMIT`` below, by name: that list may only shrink.
A listed file or function that is back under its limit fails the test too, so that the list is
kept exact (delete its entry).
"""

from __future__ import annotations

import ast
import os
import subprocess

from tests.support.runs import ROOT

MAX_FILE_LINES = 400
MAX_FUNCTION_CODE_LINES = 80

# Over a limit when the limits were set (issue 20); being split. Shrink only: never add an entry.
OVER_LIMIT: set[str] = set()


def tracked_python_files(root: str = ROOT) -> list[str]:
    """The ``.py`` files git tracks (paths relative to ``root``)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--", "*.py"], cwd=root, capture_output=True, check=True
    ).stdout
    return sorted(p for p in out.decode().split("\0") if p)


def docstring_lines(tree: ast.AST) -> set[int]:
    """The line numbers of every module, class and function docstring."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
            ):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def function_code_lines(source: str) -> dict[str, int]:
    """``{qualified function name: lines of code}`` of every function, nested ones included (a
    nested function's lines count for it and for the function around it)."""
    tree = ast.parse(source)
    lines = source.splitlines()
    docs = docstring_lines(tree)

    def is_code(number: int) -> bool:
        text = lines[number - 1].strip()
        return bool(text) and not text.startswith("#") and number not in docs

    out = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = f"{prefix}{child.name}"
                span = range(child.lineno, child.end_lineno + 1)
                out[name] = sum(is_code(n) for n in span)
                visit(child, f"{name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def over_limit(root: str = ROOT) -> dict[str, int]:
    """``{file or file::function: its size}`` of everything over a limit."""
    out = {}
    for path in tracked_python_files(root):
        with open(os.path.join(root, path), encoding="utf-8") as f:
            source = f.read()
        if len(source.splitlines()) > MAX_FILE_LINES:
            out[path] = len(source.splitlines())
        for name, count in function_code_lines(source).items():
            if count > MAX_FUNCTION_CODE_LINES:
                out[f"{path}::{name}"] = count
    return out


def test_no_file_over_400_lines_and_no_function_over_80_lines_of_code():
    found = over_limit()
    new = {k: v for k, v in found.items() if k not in OVER_LIMIT}
    assert not new, (
        f"over the limits ({MAX_FILE_LINES} lines a file, {MAX_FUNCTION_CODE_LINES} lines of "
        f"code a function): {new}; split them"
    )
    fixed = sorted(OVER_LIMIT - set(found))
    assert not fixed, f"back under the limits: delete {fixed} from OVER_LIMIT"


def test_code_lines_leave_out_blank_lines_comments_and_docstrings():
    source = '''
def f(x):
    """Docstring,

    two paragraphs."""

    # a comment
    y = x + 1  # code with a comment
    text = """a string that is not a docstring
    counts"""

    def g():
        """Inner."""
        return y

    return g
'''
    assert function_code_lines(source) == {"f": 7, "f.g": 2}
    tree_lines = docstring_lines(ast.parse(source))
    assert tree_lines == {3, 4, 5, 13}
