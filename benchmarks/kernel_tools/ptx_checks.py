"""Facts read from the PTX of a compiled kernel, for the compile tests (triton_compile.py).

ptx_facts: which instruction patterns the PTX contains (bar.sync, the read-only path, asynchronous
copies, tensor-core instructions, gpu-scope release and acquire, 4-byte accesses of float32 rows), and whether the grid barrier's
release and acquire are each executed by exactly one thread of the block (barrier_by_thread_zero,
decided by evaluating each guarding predicate from %tid.x for every thread).
"""
from __future__ import annotations

import re

_PTX_FACTS = {"bar.sync": r"\bbar\.sync\b", "ld.global.nc": r"\bld\.global\.nc\b", "cp.async": r"\bcp\.async\b",
              "mma": r"\b(mma\.sync|wgmma)\b", "gpu release": r"\b(red|atom)\.global\.gpu\.release",
              "gpu acquire": r"\b(ld|atom)\.global\.gpu\.acquire",
              # a 4-byte global access of a float32 row: a copy of 4 bytes, or a scalar load or store
              "4-byte row access": r"\bcp\.async\.\w+\.shared\.global\s*\[[^\]]*\],\s*\[[^\]]*\],\s*0x4\b"
                                   r"|\b(ld|st)\.global(\.cg|\.ca|\.cs)?\.b32\b"}
_GPU_SYNC = r"(?:atom|red|ld)\.global\.gpu\.(?:release|acquire)"


_INT_OPS = {"and": lambda a, b: a & b, "or": lambda a, b: a | b, "xor": lambda a, b: a ^ b,
            "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
            "shl": lambda a, b: a << b, "shr": lambda a, b: a >> b}
_COMPARE = {"eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
            "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def _definitions(ptx: str) -> dict:
    """{register: (opcode, operands)} of the PTX's single-definition integer and predicate registers."""
    defs = {}
    for opcode, dest, rest in re.findall(r"^\s*([a-z][\w.]*)\s+(%[rp]\d+),\s*([^;]*);", ptx, re.M):
        defs.setdefault(dest, []).append((opcode, [x.strip() for x in rest.split(",")]))
    return {reg: d[0] for reg, d in defs.items() if len(d) == 1}


def _evaluate(operand: str, tid: int, defs: dict, depth: int = 0):
    """The value of a PTX operand in thread tid (block of one dimension), or None when it depends on
    anything but %tid.x and constants through and/or/xor/add/sub/mul/shifts/bfe/setp/pred logic."""
    if re.fullmatch(r"-?\d+", operand):
        return int(operand)
    if operand == "%tid.x":
        return tid
    if operand not in defs or depth > 32:
        return None
    opcode, args = defs[operand]
    values = [_evaluate(a, tid, defs, depth + 1) for a in args]
    if any(v is None for v in values):
        return None
    base = opcode.split(".")
    if base[0] == "mov":
        return values[0]
    if base[0] in _INT_OPS and len(values) == 2:
        return _INT_OPS[base[0]](*values)
    if base[0] == "bfe" and len(values) == 3:
        return (values[0] >> values[1]) & ((1 << values[2]) - 1)
    if base[0] == "setp" and base[1] in _COMPARE and len(values) == 2:
        return _COMPARE[base[1]](*values)
    if base[0] == "not" and base[-1] == "pred":
        return not values[0]
    return None


def barrier_by_thread_zero(ptx: str, threads: int) -> bool:
    """True when the PTX has gpu-scope release/acquire instructions and each is executed by exactly
    one thread of the block: its predicate, evaluated from %tid.x for every thread of the block,
    holds for one thread only (unknown or unpredicated: False). Each program then arrives at the
    grid barrier once per step. If a compiler ran the scalar atomics in every thread, each program
    would add `threads` to the counter and its splits would pass the barrier before the others had
    written their columns."""
    defs = _definitions(ptx)
    guards = re.findall(r"^\s*(?:@(!?)(%p\d+)\s+)?" + _GPU_SYNC, ptx, re.M)
    if not guards:
        return False
    for negated, pred in guards:
        if not pred:
            return False
        values = [_evaluate(pred, tid, defs) for tid in range(threads)]
        if any(v is None for v in values) or sum(bool(v) != bool(negated) for v in values) != 1:
            return False
    return True


def ptx_facts(ptx: str, threads: int | None = None) -> list[str]:
    """Which of the instruction patterns the tests check (_PTX_FACTS) the PTX contains, plus
    "barrier by thread 0" (barrier_by_thread_zero) when the block's thread count is given."""
    facts = [name for name, pattern in _PTX_FACTS.items() if re.search(pattern, ptx)]
    if threads is not None and barrier_by_thread_zero(ptx, threads):
        facts.append("barrier by thread 0")
    return facts
