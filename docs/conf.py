"""Sphinx configuration of the plif_jax docs: ``sphinx-build -W docs build/docs`` (no network)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path[:0] = [str(ROOT), str(DOCS / "_ext")]  # plif_jax and configs from this tree; directives
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # autodoc imports JAX: never look for a GPU here

project = "plif_jax"
author = "plif_jax authors"
copyright = "2026, plif_jax authors"
release = version = "0.1.0"

# myst-nb renders the notebook page (stored cells, never executed); without it, plain MyST.
_HAVE_NB = importlib.util.find_spec("myst_nb") is not None
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",  # the notebook's $...$; pages without math load nothing
    "myst_nb" if _HAVE_NB else "myst_parser",
    "plif_docs",
]
nb_execution_mode = "off"
source_suffix = {".md": "myst-nb" if _HAVE_NB else "markdown", ".rst": "restructuredtext"}
if _HAVE_NB:
    source_suffix[".ipynb"] = "myst-nb"
exclude_patterns = ["_build", "build", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints"]
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# Broken cross-references fail the build (-W): every :func:/:class:/:mod: into plif_jax resolves
# (a short name through the referring module: _ext/plif_docs.py). Other libraries cannot be linked
# offline (no intersphinx, no network), so a dotted name outside plif_jax is not checked, nor are
# the bare type names their annotations use, nor plif_jax's private names (not documented).
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(?!plif_jax\b)[A-Za-z_]\w*\..*"),
    (
        r"py:.*",
        r"(Array|ArrayLike|Module|Rngs|ConfigDict|DType|Path|PathLike|Any|Callable|Iterator"
        r"|Iterable|Sequence|Mapping|MutableMapping|Generator|NoReturn|Self|T|NamedTuple)",
    ),
    (r"py:.*", r"([\w.]*\.)?_\w+(\..*)?"),
    # napoleon reads a property docstring's "Words: ..." first line as a type: never a name
    (r"py:class", r".*\s.*"),
]
# Defects in the package's own docstrings, left for their owners (each is a docstring fix):
# a role naming two exceptions, and a role reading "a ValueError".
nitpick_ignore = [("py:exc", "MissingDataError / DataError"), ("py:exc", "a ValueError")]

autodoc_default_options = {"undoc-members": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True
autodoc_mock_imports: list[str] = []
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: no second description of a dataclass field
add_module_names = False

html_theme = "furo" if importlib.util.find_spec("furo") else "alabaster"
html_title = "plif_jax"
highlight_language = "text"  # unlabelled blocks are output or shell, never lexed as Python
html_static_path: list[str] = []
html_show_sourcelink = False
