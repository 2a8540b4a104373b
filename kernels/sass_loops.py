"""Loops in SASS text (``cuobjdump --dump-sass``): the spans a backward branch closes, and the
innermost of those that issue given instructions (a kernel's main loop, one step of it).

Used by the SASS inspection of the Triton kernels (``stbench sass``) and the Gluon backend's
ahead-of-time build checks (``kernels/gluon/aot.py``)."""

from __future__ import annotations

import re

INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")  # /*address*/ text ;
BRANCH = re.compile(r"\bBRA\b.*?0x([0-9a-f]+)")


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, text) of every instruction, in address order."""
    return [(int(a, 16), t.strip()) for a, t in INSTRUCTION.findall(sass)]


def innermost_loops(sass: str, opcodes: tuple[str, ...]) -> list[list[str]]:
    """The instruction texts of each innermost loop (a span closed by a backward branch that
    holds no other such span) issuing one of ``opcodes``, in address order."""
    ins = instructions(sass)
    index = {a: i for i, (a, _) in enumerate(ins)}
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, opcodes)) + r")\b")
    spans = []
    for i, (a, text) in enumerate(ins):
        m = BRANCH.search(text)
        top = int(m.group(1), 16) if m else None
        if top is not None and top < a and top in index and any(
                pattern.search(t) for _, t in ins[index[top]: i + 1]):
            spans.append((index[top], i))
    inner = sorted((lo, hi) for lo, hi in spans
                   if not any((lo, hi) != (a, b) and lo <= a and b <= hi for a, b in spans))
    return [[t for _, t in ins[lo: hi + 1]] for lo, hi in inner]
