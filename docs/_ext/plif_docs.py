"""Sphinx directives that build reference tables from the code at build time.

* ``config-fields``: every field of ``configs/common.py`` with its default and its own comment
  (:mod:`config_fields`), grouped by the file's sections, and the ``create_model`` option it feeds
  (``plif_jax.models.options.CONFIG_FIELDS``).
* ``dataset-configs``: what each ``configs/<name>.py`` changes from the common defaults.
* ``cli-help``: a command's ``--help`` (or absl's ``--helpshort``) output, run at build time.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import re
import subprocess
import sys

import config_fields
from docutils import nodes
from docutils.parsers.rst import Directive
from docutils.statemachine import StringList
from sphinx.util.nodes import nested_parse_with_titles

_CODE = re.compile(r"`([^`]+)`")


def _text(text: str) -> nodes.paragraph:
    """A paragraph in which ```x``` / ``x`` spans of a source comment become literals."""
    para = nodes.paragraph()
    pos = 0
    for match in _CODE.finditer(text):
        para += nodes.Text(text[pos : match.start()])
        para += nodes.literal(text=match.group(1).strip("`"))
        pos = match.end()
    para += nodes.Text(text[pos:])
    return para


def _table(header: list[str], rows: list[list[nodes.Node]], widths: list[int]) -> nodes.table:
    table = nodes.table(classes=["plif-generated"])
    group = nodes.tgroup(cols=len(header))
    table += group
    for width in widths:
        group += nodes.colspec(colwidth=width)
    head = nodes.thead()
    group += head
    row = nodes.row()
    for title in header:
        row += nodes.entry("", nodes.paragraph(text=title))
    head += row
    body = nodes.tbody()
    group += body
    for cells in rows:
        row = nodes.row()
        for cell in cells:
            row += nodes.entry("", cell)
        body += row
    return table


def _literal(text: str) -> nodes.paragraph:
    return nodes.paragraph("", "", nodes.literal(text=text))


class ConfigFields(Directive):
    """The run config's fields, one table per section of ``configs/common.py``."""

    def run(self) -> list[nodes.Node]:
        from plif_jax.models import options

        option_of = {field: option for option, field in options.CONFIG_FIELDS.items()}
        out: list[nodes.Node] = []
        sections: dict[str, list] = {}
        for field in config_fields.config_fields():
            sections.setdefault(field.section, []).append(field)
        for title, fields in sections.items():
            section_id = nodes.make_id(f"config-{title.split('(')[0]}")
            section = nodes.section(ids=[section_id])
            section += nodes.title(text=title)
            rows = []
            for f in fields:
                option = option_of.get(f.path)
                rows.append(
                    [
                        _literal(f"config.{f.path}"),
                        _literal(f.default),
                        _literal(option) if option else nodes.paragraph(text=""),
                        _text(f.description or "(no comment in configs/common.py)"),
                    ]
                )
            header = ["field", "default", "create_model option", "meaning"]
            section += _table(header, rows, [22, 12, 14, 52])
            out.append(section)
        return out


class DatasetConfigs(Directive):
    """What each ``configs/<name>.py`` sets beyond ``configs/common.py``."""

    def run(self) -> list[nodes.Node]:
        rows = []
        for name, changed in config_fields.dataset_overrides().items():
            values = ", ".join(f"{key}={value!r}" for key, value in sorted(changed.items()))
            rows.append([_literal(f"configs/{name}.py"), _text(f"`{values}`")])
        return [_table(["config file", "fields it sets (the rest: common.py)"], rows, [25, 75])]


def _flags_only(text: str) -> str:
    """The flag list of a help text, without the module docstring printed above it."""
    text = text.split("\nTry --helpfull")[0].rstrip()
    if "\nflags:\n" in text:  # absl: the docstring, "flags:", "<file>:", then the flags
        flags_part = text.split("\nflags:\n", 1)[1].strip("\n").splitlines()
        return "\n".join(line for line in flags_part if not line.endswith(".py:"))
    usage, _, rest = text.partition("\n\n")  # argparse: usage, description, options
    options = rest[rest.find("options:") :] if "options:" in rest else rest
    return f"{usage}\n\n{options}".rstrip()


class CliHelp(Directive):
    """``python -m MODULE FLAG`` run from the repository root; its output as a literal block."""

    required_arguments = 1
    optional_arguments = 1

    def run(self) -> list[nodes.Node]:
        module = self.arguments[0]
        flag = self.arguments[1] if len(self.arguments) > 1 else "--help"
        command = [sys.executable, "-m", module, flag]
        result = subprocess.run(
            command, cwd=config_fields.ROOT, capture_output=True, text=True, timeout=300
        )
        text = result.stdout + result.stderr
        if "flags:" not in text and "usage:" not in text:
            raise self.error(f"`{' '.join(command[1:])}` printed no help (rc {result.returncode})")
        text = _flags_only(text.replace(str(config_fields.ROOT) + "/", ""))
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


def _canonical(target: str) -> str | None:
    """Where the object ``target`` names is defined (``plif_jax.models.create_model`` ->
    ``plif_jax.models.factory.create_model``), by importing it; None if it cannot be found."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for name in parts[cut:]:
                obj = getattr(obj, name)
        except AttributeError:
            return None
        module = getattr(obj, "__module__", None)
        qualname = getattr(obj, "__qualname__", None)
        if isinstance(obj, type(sys)):
            return obj.__name__
        return f"{module}.{qualname}" if module and qualname else None
    return None


def _candidates(node) -> list[str]:
    """Full dotted names a reference may mean: as written (``plif_jax...``), or a short name
    looked up in the referring module or class, as Python would see it there."""
    target = node["reftarget"].lstrip(".~")
    if target.startswith("plif_jax"):
        return [target]
    module, cls = node.get("py:module"), node.get("py:class")
    if not module or not module.startswith("plif_jax"):
        return []
    out = [f"{module}.{cls}.{target}"] if cls else []
    return [*out, f"{module}.{target}"]


def _resolve_reexport(app, env, node, contnode):
    """A reference to a name where it is imported or re-exported (``plif_jax.PLIF``, ``BatchSource``
    inside :mod:`plif_jax.data.datasets`) resolves to the name's documented definition."""
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    for candidate in _candidates(node):
        canonical = _canonical(candidate)
        if canonical is None:
            continue
        for reftype in (node["reftype"], "obj"):
            found = domain.resolve_xref(
                env, node.get("refdoc", ""), app.builder, reftype, canonical, node, contnode
            )
            if found is not None:
                return found
    found = _unique_suffix(app, env, node, contnode, domain)
    if found is None and any(_undocumented(c, node["reftype"]) for c in _candidates(node)):
        return contnode  # plain text: the name exists, so a rename still fails the build
    return found


def _undocumented(target: str, reftype: str) -> bool:
    """A name that exists but that autodoc documents nowhere: a module constant (autodoc
    documents data only with a doc-comment) or a method inherited from a private base class."""
    if not _exists(target):
        return False
    canonical = _canonical(target) or ""
    return reftype in ("data", "attr", "const", "obj") or "._" in canonical


def _exists(target: str) -> bool:
    """Whether ``target`` (``plif_jax.x.NAME``) imports and its attributes exist."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def _unique_suffix(app, env, node, contnode, domain):
    """A bare name (``create_model``) that exactly one documented plif_jax object ends with."""
    target = node["reftarget"].lstrip(".~")
    if "." in target or not node.get("py:module", "").startswith("plif_jax"):
        return None
    hits = [name for name in domain.objects if name.endswith(f".{target}")]
    hits = [name for name in hits if name.startswith("plif_jax.")]
    if len(hits) != 1:
        return None
    return domain.resolve_xref(
        env, node.get("refdoc", ""), app.builder, "obj", hits[0], node, contnode
    )


def _jax_functions(module_name: str) -> list[str]:
    """Public ``jax.custom_vjp`` / ``custom_jvp`` functions defined in a module: autodoc takes
    them for neither functions nor data, so ``automodule`` leaves them out."""
    module = importlib.import_module(module_name)
    return [
        name
        for name, obj in vars(module).items()
        if type(obj).__name__ in ("custom_vjp", "custom_jvp")
        and getattr(obj, "__module__", None) == module_name
        and not name.startswith("_")
    ]


class Submodules(Directive):
    """``automodule`` of every submodule of a package (the content lines first, in that order,
    then the rest alphabetically), so that a new module is documented without editing a page."""

    required_arguments = 1
    has_content = True

    def run(self) -> list[nodes.Node]:
        package = importlib.import_module(self.arguments[0])
        found = [
            m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_")
        ]
        first = [name.strip() for name in self.content if name.strip()]
        unknown = sorted(set(first) - set(found))
        if unknown:
            raise self.error(f"{package.__name__} has no submodules {unknown}")
        lines = []
        for name in [*first, *sorted(set(found) - set(first))]:
            module = f"{package.__name__}.{name}"
            title = f"``{module}``"
            lines += [title, "-" * len(title), "", f".. automodule:: {module}"]
            lines += ["   :members:", "   :show-inheritance:", ""]
            lines += [f".. autofunction:: {module}.{fn}" for fn in _jax_functions(module)]
            lines += [""]
        node = nodes.section()
        nested_parse_with_titles(self.state, StringList(lines, source=self.arguments[0]), node)
        return node.children


# Docstring defects in the package that the build reports but cannot fix (the package's owners
# do): a bullet item whose continuation line starts in column 0. Each entry is (where, message);
# only a warning matching both is dropped, so any other defect still fails the -W build.
KNOWN_DOCSTRING_DEFECTS = [
    ("docstring of plif_jax.analysis.paper_runs:", "Bullet list ends without a blank line"),
    ("docstring of plif_jax.runtime.allocator:", "Bullet list ends without a blank line"),
]


class _KnownDefects(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        where, message = str(getattr(record, "location", "")), record.getMessage()
        return not any(w in where and m in message for w, m in KNOWN_DOCSTRING_DEFECTS)


def _install_filter(app) -> None:
    for handler in logging.getLogger("sphinx").handlers:
        handler.filters.insert(0, _KnownDefects())


def setup(app):
    app.connect("builder-inited", _install_filter)
    app.connect("missing-reference", _resolve_reexport)
    app.add_directive("plif-submodules", Submodules)
    app.add_directive("config-fields", ConfigFields)
    app.add_directive("dataset-configs", DatasetConfigs)
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True, "version": "1"}
