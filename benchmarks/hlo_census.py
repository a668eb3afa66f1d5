"""What a compiled XLA program does per call, counted from its optimised HLO text.

``compiled.as_text()`` of a jitted step lists the kernels the runtime launches: fusions,
custom calls (cuDNN convolutions, cuBLAS GEMMs), copies, collectives, and while loops whose
bodies run ``known_trip_count`` times. :func:`census` walks the entry computation, multiplies
loop bodies out and returns, per call:

* ``launches``: kernels (every instruction that is not free: parameters, tuples, bitcasts and
  the like are free). A loop's condition is counted only when its trip count is unknown
  (XLA:GPU skips the condition of a loop with a known trip count).
* ``bytes``: what the kernels read and write: each kernel's operands plus results, where a
  fusion reading a parameter only through (dynamic-)slices counts the slices (also when the
  slices are taken after one-to-one elementwise ops on the whole parameter, as XLA writes the
  steps of an unrolled scan: its kernel computes each output element from the elements it
  needs), and a fusion whose root updates a parameter in place (dynamic-update-slice) counts
  the update.
  ``bytes_naive`` counts whole operands and results.
* ``flops``: convolution and matrix-multiply FLOPs (cuDNN / cuBLAS / Triton GEMM calls and any
  ``dot`` or ``convolution`` left in the program), 2 per multiply-add. Elementwise work is not
  counted. XLA's own ``cost_analysis()`` is empty for a compile-only GPU and counts a loop body
  once.
* ``collectives`` per kind, ``custom_calls`` per target, ``by_opcode``.

These are properties of the compiled program, not measurements of a run.
"""

from __future__ import annotations

import dataclasses
import re

_DTYPE_BYTES = {
    "pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1,
    "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
    "f64": 8, "s64": 8, "u64": 8, "c64": 8, "c128": 16, "token": 0,
}  # fmt: skip
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([0-9,]*)\]")
_HEADER = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(ROOT\s+)?%?([\w.\-]+)\s*=\s*")
FREE = {
    "parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
    "opt-barrier", "add-dependency", "domain", "partition-id", "replica-id",
    "while", "conditional", "call", "async-update",
}  # fmt: skip
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


@dataclasses.dataclass
class Instr:
    name: str
    type: str
    opcode: str
    operands: list[str]
    attrs: str
    root: bool


@dataclasses.dataclass
class Computation:
    name: str
    entry: bool
    instrs: list[Instr] = dataclasses.field(default_factory=list)

    def by_name(self) -> dict[str, Instr]:
        return {i.name: i for i in self.instrs}


@dataclasses.dataclass
class Census:
    """Per-call counts of one compiled program (module docstring)."""

    launches: float = 0.0
    bytes: float = 0.0
    bytes_naive: float = 0.0
    flops: float = 0.0
    loop_iterations: float = 0.0
    collectives: dict = dataclasses.field(default_factory=dict)
    custom_calls: dict = dataclasses.field(default_factory=dict)
    by_opcode: dict = dataclasses.field(default_factory=dict)

    def add(self, other: Census, times: float = 1.0) -> None:
        for name in ("launches", "bytes", "bytes_naive", "flops", "loop_iterations"):
            setattr(self, name, getattr(self, name) + getattr(other, name) * times)
        for mine, theirs in (
            (self.collectives, other.collectives),
            (self.custom_calls, other.custom_calls),
            (self.by_opcode, other.by_opcode),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v * times

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def type_bytes(text: str) -> float:
    """Bytes of every array in an HLO type (a tuple type sums its elements)."""
    total = 0.0
    for dtype, dims in _ARRAY.findall(text):
        if dtype in _DTYPE_BYTES:
            total += _prod(int(d) for d in dims.split(",") if d) * _DTYPE_BYTES[dtype]
    return total


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= x
    return n


def _dims(text: str) -> list[int]:
    m = _ARRAY.search(text)
    return [int(d) for d in m.group(2).split(",") if d] if m else []


def _group_end(text: str, start: int) -> int:
    """Index just past the bracket group opening at ``text[start]``."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "({[":
            depth += 1
        elif text[i] in ")}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return len(text)


def parse(text: str) -> dict[str, Computation]:
    """The computations of an HLO module's text, by name."""
    comps: dict[str, Computation] = {}
    current = None
    for line in text.splitlines():
        if current is None:
            m = _HEADER.match(line)
            if m:
                current = comps.setdefault(m.group(2), Computation(m.group(2), bool(m.group(1))))
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        rest = line[m.end() :]
        if rest.startswith("("):
            end = _group_end(rest, 0)
            typ, rest = rest[:end], rest[end:].lstrip()
        else:
            typ, _, rest = rest.partition(" ")
        op = re.match(r"([\w\-]+)\(", rest)
        if not op:
            continue
        end = _group_end(rest, op.end() - 1)
        operands = re.findall(r"%([\w.\-]+)", rest[op.end() - 1 : end])
        current.instrs.append(
            Instr(m.group(2), typ, op.group(1), operands, rest[end:], bool(m.group(1)))
        )
    return comps


def _attr(attrs: str, key: str) -> str | None:
    m = re.search(rf"\b{key}=%?([\w.\-]+)", attrs)
    return m.group(1) if m else None


def _trip_count(attrs: str) -> int | None:
    m = re.search(r'"known_trip_count":\{"n":"(\d+)"', attrs)
    return int(m.group(1)) if m else None


def _operand_bytes(instr: Instr, local: dict[str, Instr]) -> float:
    return sum(type_bytes(local[o].type) for o in instr.operands if o in local)


def _fusion_bytes(instr: Instr, comps: dict[str, Computation]) -> float:
    """Bytes a fusion touches: sliced reads as slices, an in-place update as its update."""
    called = comps.get(_attr(instr.attrs, "calls") or "")
    if called is None:
        return -1.0
    inner = called.by_name()
    users: dict[str, list[Instr]] = {}
    for i in called.instrs:
        for o in i.operands:
            users.setdefault(o, []).append(i)
    root = next((i for i in called.instrs if i.root), None)
    outs = (
        [inner[o] for o in root.operands if o in inner]
        if root and root.opcode == "tuple"
        else [root]
    )
    params = {i.name for i in called.instrs if i.opcode == "parameter"}
    in_place, written = set(), 0.0
    for out in outs:
        if out is None:
            continue
        if out.opcode == "dynamic-update-slice" and out.operands and out.operands[0] in params:
            in_place.add(out.operands[0])
            written += type_bytes(inner[out.operands[1]].type)
        else:
            written += type_bytes(out.type)
    read = 0.0
    for name in params:
        us = [
            u
            for u in users.get(name, [])
            if not (name in in_place and u.opcode == "dynamic-update-slice")
        ]
        sliced = all(u.opcode in ("dynamic-slice", "slice") and u.operands[0] == name for u in us)
        if us and sliced:
            read += sum(type_bytes(u.type) for u in us)
        elif us:
            read += type_bytes(inner[name].type) * _sliced_share(name, users, inner)
    return read + written


# Ops whose result has one element per element of the operand walked (same count, any layout).
_ONE_TO_ONE = {
    "abs", "add", "and", "atan2", "bitcast", "bitcast-convert", "ceil", "clamp", "compare",
    "convert", "copy", "cosine", "divide", "exponential", "exponential-minus-one", "floor",
    "is-finite", "log", "log-plus-one", "logistic", "maximum", "minimum", "multiply", "negate",
    "not", "or", "power", "remainder", "reshape", "round-nearest-afz", "round-nearest-even",
    "rsqrt", "select", "sign", "sine", "sqrt", "subtract", "tanh", "transpose", "xor",
}  # fmt: skip


def _elements(type_text: str) -> int:
    found = _ARRAY.search(type_text)
    return _prod(_dims(type_text)) if found else 0


def _sliced_share(name: str, users: dict[str, list[Instr]], inner: dict[str, Instr]) -> float:
    """The share of parameter ``name`` a fusion reads: 1, or the slices' share of its elements
    when every use reaches a (dynamic-)slice through one-to-one elementwise ops (a step of an
    unrolled scan computed on the whole ``[T, ...]`` value and then sliced reads that step's
    elements only: XLA computes a fused value per output element)."""
    total = _elements(inner[name].type)
    frontier, seen, sliced = [name], set(), 0
    while frontier:
        current = frontier.pop()
        if current in seen:
            continue
        seen.add(current)
        uses = users.get(current, [])
        if not uses or inner[current].root:
            return 1.0  # an output of the fusion, or unused (counted whole, as before)
        for u in uses:
            if u.opcode in ("slice", "dynamic-slice") and u.operands[0] == current:
                sliced += _elements(u.type)
            elif u.opcode in _ONE_TO_ONE and _elements(u.type) == total:
                frontier.append(u.name)
            else:
                return 1.0
    return min(1.0, sliced / total) if total else 1.0


def _dot_flops(instr: Instr, local: dict[str, Instr], pattern: str) -> float:
    lhs = local.get(instr.operands[0]) if instr.operands else None
    m = re.search(pattern, instr.attrs)
    if lhs is None or m is None:
        return 0.0
    dims = _dims(lhs.type)
    k = _prod(dims[int(d)] for d in re.findall(r"\d+", m.group(1)))
    return 2.0 * _prod(_dims(instr.type)) * k


def _conv_flops(instr: Instr, local: dict[str, Instr], target: str) -> float:
    """2 x |forward output| x |kernel| / C_out, for each of the three cuDNN convolutions."""
    ops = [local[o].type for o in instr.operands if o in local]
    labels = re.search(r"dim_labels=(\w+)_(\w+)->(\w+)", instr.attrs)
    if len(ops) < 2 or labels is None:
        return 0.0
    result = _ARRAY.search(instr.type).group(0)
    if "BackwardFilter" in target:
        y, w = ops[1], result
    elif "BackwardInput" in target:
        y, w = ops[0], ops[1]
    else:
        y, w = result, ops[1]
    wd = _dims(w)  # the kernel's input-feature dimension is already C_in / groups
    c_out = wd[labels.group(2).index("o")] if "o" in labels.group(2) else 1
    return 2.0 * _prod(_dims(y)) * _prod(wd) / max(c_out, 1)


def _flops(instr: Instr, comps: dict[str, Computation], local: dict[str, Instr]) -> float:
    op = instr.opcode
    if op == "dot":
        return _dot_flops(instr, local, r"lhs_contracting_dims=\{([0-9,]*)\}")
    if op == "convolution":
        return _conv_flops(instr, local, "forward")
    if op == "custom-call":
        t = re.search(r'custom_call_target="([^"]+)"', instr.attrs)
        target = t.group(1) if t else ""
        if "conv" in target.lower():
            return _conv_flops(instr, local, target)
        if "cublas" in target or "gemm" in target.lower():
            return _dot_flops(instr, local, r'"lhs_contracting_dimensions":\[([^\]]*)\]')
        return 0.0
    if op == "fusion":
        called = comps.get(_attr(instr.attrs, "calls") or "")
        if called is None:
            return 0.0
        inner = called.by_name()
        return sum(_flops(i, comps, inner) for i in called.instrs)
    return 0.0


def _count(name: str, comps: dict[str, Computation], memo: dict[str, Census]) -> Census:
    if name in memo:
        return memo[name]
    comp = comps[name]
    local = comp.by_name()
    out = Census()
    for i in comp.instrs:
        op = i.opcode
        if op == "while":
            trips = _trip_count(i.attrs)
            n = trips if trips is not None else 1
            out.add(_count(_attr(i.attrs, "body"), comps, memo), n)
            if trips is None:  # the condition runs (and syncs with the host) every iteration
                out.add(_count(_attr(i.attrs, "condition"), comps, memo), n + 1)
            out.loop_iterations += n
        elif op == "conditional":
            found = re.search(r"branch_computations=\{([^}]*)\}", i.attrs)
            names = (
                re.findall(r"%?([\w.\-]+)", found.group(1))
                if found
                else [_attr(i.attrs, "true_computation"), _attr(i.attrs, "false_computation")]
            )
            branches = [_count(b, comps, memo) for b in names if b in comps]
            if branches:
                out.add(max(branches, key=lambda c: c.launches))
        elif op == "call":
            target = _attr(i.attrs, "to_apply")
            if target in comps:
                out.add(_count(target, comps, memo))
        elif op not in FREE and not op.endswith("-done"):
            _kernel(out, i, comps, local)
    memo[name] = out
    return out


def _kernel(out: Census, i: Instr, comps: dict[str, Computation], local: dict) -> None:
    op = i.opcode
    out.launches += 1
    out.by_opcode[op] = out.by_opcode.get(op, 0) + 1
    if op == "custom-call":
        t = re.search(r'custom_call_target="([^"]+)"', i.attrs)
        key = t.group(1) if t else "?"
        out.custom_calls[key] = out.custom_calls.get(key, 0) + 1
    base = op[: -len("-start")] if op.endswith("-start") else op
    if base in COLLECTIVES:
        out.collectives[base] = out.collectives.get(base, 0) + 1
    naive = type_bytes(i.type) + _operand_bytes(i, local)
    touched = _fusion_bytes(i, comps) if op == "fusion" else naive
    out.bytes_naive += naive
    out.bytes += naive if touched < 0 else touched
    out.flops += _flops(i, comps, local)


def census(text: str) -> Census:
    """The per-call :class:`Census` of a compiled module (``compiled.as_text()``)."""
    comps = parse(text)
    entry = next((c for c in comps.values() if c.entry), None)
    if entry is None:
        raise ValueError("no ENTRY computation in the HLO text")
    return _count(entry.name, comps, {})
