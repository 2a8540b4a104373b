"""``stbench sass``: compile the Triton kernels for an H200 (sm_90) and summarise their SASS.

    stbench sass                               # the table on stdout (about a minute, no GPU)
    stbench sass --out sass_inspect.txt --only dkdv

Per kernel at the tuned configurations of the standard problem: registers and spills (ptxas
-v), shared memory, resident CTAs per SM, SASS instruction counts (HGMMA, HMMA, LDGSTS, LDSM,
MUFU.EX2, ...) and the length of one step of the main (FULL tile) loop (``stbench.sass``). It
needs no GPU: Triton compiles ahead of time for the target and its bundled ptxas and cuobjdump
read the result. Exit code 1 when a kernel does not compile.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from stbench.commands import fail

KERNEL_MODULES = ("stbench.kernels.triton.forward", "stbench.kernels.triton.backward")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sass", help="compile the Triton kernels for sm_90 (no GPU needed) and summarise SASS",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default=None, help="write the report here (default: stdout)")
    p.add_argument("--only", default=None,
                   help="rows whose kernel name contains this (fwd, dq, dkdv, delta, local, ...)")
    p.set_defaults(func=run)


def run(args) -> int:
    if os.environ.get("TRITON_INTERPRET") == "1":
        if any(m in sys.modules for m in KERNEL_MODULES):
            return fail("sass", "the Triton kernels were already defined for the interpreter "
                        "in this process: run stbench sass on its own, without TRITON_INTERPRET=1")
        del os.environ["TRITON_INTERPRET"]  # the kernels must be defined compiled, not interpreted
    from stbench import sass

    text, errors = sass.report(args.only)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
        print(f"stbench sass: wrote {args.out}" + (f" ({errors} kernels failed)" if errors else ""))
    else:
        sys.stdout.write(text)
    return 1 if errors else 0
