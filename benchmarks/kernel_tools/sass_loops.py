"""The hot loop of a compiled kernel, read from its SASS, for the compile table (triton_compile.py).

sass(cubin) disassembles a cubin with the cuobjdump that triton bundles beside its ptxas. loops()
finds the loops as backward branches: a branch at address a to a target t < a closes a loop whose
body is [t, a]. hot_loop() is the loop the kernel spends its time in: among the loops that hold
dot instructions (FFMA, HMMA, DFMA, DMMA), one that contains no other such loop (the innermost
reduction chunk of the default kernels; the time loop of the persistent ones, whose only inner
loop is the barrier's spin). Its instruction count and the dot instructions' share of it are a
static measure of how much of an issue-bound loop is arithmetic: per 16x64x64 chunk of the default
fp32 forward at H = 500, 542 instructions with 256 FFMA (0.47) when rows move 4 bytes at a time,
422 (0.61) at 16 bytes.
"""
from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

DOT_OPCODES = ("FFMA", "HMMA", "DFMA", "DMMA")
GLOBAL_OPCODES = ("LDG", "LDGSTS", "STG")
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")


def cuobjdump() -> str:
    from triton.backends.nvidia.compiler import get_ptxas
    from triton_capture import ARCH
    return str(Path(get_ptxas(ARCH).path).with_name("cuobjdump"))


def sass(cubin: bytes) -> str:
    """cuobjdump -sass of a cubin."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        return subprocess.run([cuobjdump(), "-sass", str(path)], capture_output=True, text=True, check=True).stdout


def parse(text: str) -> list[tuple[int, str, str]]:
    """[(address, opcode with its modifiers, e.g. 'LDG.E.64.STRONG.GPU', operands)] in program order,
    the predicate (@P0) dropped."""
    out = []
    for address, body in _INSTRUCTION.findall(text):
        words = [w for w in body.split() if not w.startswith("@")]
        if words:
            out.append((int(address, 16), words[0], " ".join(words[1:])))
    return out


def loops(text: str) -> list[dict]:
    """One dict per backward branch: {'start', 'end' (addresses), 'counts' (Counter of opcodes
    without modifiers, e.g. 'FFMA')}."""
    program = parse(text)
    found = []
    for address, opcode, operands in program:
        target = re.match(r"(?:`?\(?)0x([0-9a-f]+)", operands) if opcode == "BRA" else None
        if target and int(target.group(1), 16) < address:
            start, end = int(target.group(1), 16), address
            found.append({"start": start, "end": end,
                          "counts": Counter(op.split(".")[0] for a, op, _ in program if start <= a <= end)})
    return found


def _dots(counts: Counter) -> int:
    return sum(counts[op] for op in DOT_OPCODES)


def hot_loop(text: str) -> dict | None:
    """{'instructions', 'dot', 'dot_share', 'global'} of the hot loop (see the module docstring);
    None when no loop holds a dot instruction."""
    with_dots = [loop for loop in loops(text) if _dots(loop["counts"])]
    innermost = [a for a in with_dots
                 if not any(b is not a and a["start"] <= b["start"] and b["end"] <= a["end"] for b in with_dots)]
    if not innermost:
        return None
    hot = max(innermost, key=lambda loop: (_dots(loop["counts"]), -sum(loop["counts"].values())))
    total = sum(hot["counts"].values())
    return {"instructions": total, "dot": _dots(hot["counts"]), "dot_share": round(_dots(hot["counts"]) / total, 3),
            "global": sum(hot["counts"][op] for op in GLOBAL_OPCODES),
            "l2_loads_ahead": l2_loads_ahead(text, hot["start"], hot["end"]),
            "mma_chain": mma_chain(text, hot["start"], hot["end"])}


_REGISTER = re.compile(r"\bR(\d+)\b")


def l2_loads_ahead(text: str, start: int, end: int) -> int:
    """In the persistent kernels, the most state-chunk loads in flight at once in [start, end]: loads
    that bypass L1 (LDG ... .STRONG.GPU, PTX's ld.global.cg: how a program reads what other programs
    wrote; not the grid barrier's acquire, the one followed by an L1 invalidation, CCTL.IVALL) issued
    and not yet waited for. A load is waited for at the first later instruction that names one of
    the registers it writes (its width: .64 two, .128 four): the warp stalls there until the data
    arrives. With one chunk in flight, each chunk of a step waits for its own L2 round trip."""
    program = [(opcode, operands) for address, opcode, operands in parse(text) if start <= address <= end]
    pending, most = [], 0
    for i, (opcode, operands) in enumerate(program):
        named = {int(r) for r in _REGISTER.findall(operands)}
        pending = [regs for regs in pending if not regs & named]
        acquire = i + 1 < len(program) and program[i + 1][0].startswith("CCTL")
        if opcode.startswith("LDG") and "STRONG.GPU" in opcode and not acquire:
            first = int(_REGISTER.search(operands).group(1))
            width = 4 if ".128" in opcode else 2 if ".64" in opcode else 1
            pending.append(set(range(first, first + width)))
            most = max(most, len(pending))
    return most


def mma_chain(text: str, start: int, end: int) -> int:
    """The longest chain of dependent tensor-core instructions in [start, end] (HMMA, DMMA): each
    link accumulates into the result of the one before (its last operand, C, is the register the
    previous one wrote, D). A step cannot take less than this many MMA latencies."""
    depth, longest = {}, 0
    for address, opcode, text_operands in parse(text):
        if not start <= address <= end:
            continue
        operands = [o.strip(" ,") for o in text_operands.split(",")]
        dest = operands[0].split(".")[0]
        if opcode.split(".")[0] in ("HMMA", "DMMA"):
            accumulator = operands[-1].split(".")[0]
            depth[dest] = depth.get(accumulator, 0) + 1 if accumulator != "RZ" else 1
            longest = max(longest, depth[dest])
        elif dest in depth:
            depth.pop(dest)  # overwritten by something else: a new chain starts there
    return longest


def hot_loop_of(cubin: bytes) -> dict | None:
    """hot_loop of a cubin's SASS; None where it cannot be read (no cuobjdump beside ptxas), so that a
    report never loses a compiled kernel's other figures to the disassembler."""
    try:
        return hot_loop(sass(cubin))
    except (OSError, subprocess.CalledProcessError):
        return None
