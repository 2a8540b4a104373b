"""``stbench ab``: this tree's kernels against a base revision's, timed interleaved in one
process, both checked against dense; a verdict per problem and an exit code.

    stbench ab --base main                       # the regression problem set, every kernel backend
    stbench ab --base HEAD~1 --backends triton --layouts causal --ns 65536 --modes fwd+bwd
    stbench ab --base-dir /path/to/base/checkout --json ab.json --markdown ab.md
    stbench ab --base-dir . --head-dir /tmp/planted     # a planted kernel tree as head

The base's kernel packages (``kernels/<backend>``, from ``git archive REV`` or ``--base-dir``)
are imported under another module name and run on THIS tree's layouts and device plan; a base
whose kernels need another plan format stops with one line. Exit code: 1 when any problem is
slower beyond the threshold or wrong, 2 for a usage error, else 0. Method and statistics:
``stbench.regress.ab`` and ``stbench.regress.stats``; docs/regression.md.
"""

from __future__ import annotations

import sys
import time

from stbench.regress import options

PROG = "stbench ab"


def _problem_kw(args) -> dict:
    from stbench.commands import csv_list
    from stbench.problems import DTYPES, layout_spec
    from stbench.timing import MODES

    kw = {}
    if args.layouts:
        kw["layouts"] = csv_list(args.layouts)
        for name in kw["layouts"]:
            try:
                layout_spec(name)
            except ValueError as exc:
                raise options.OptionError(f"--layouts: {exc}") from None
    if args.ns:
        kw["ns"] = options.positive_ints(args.ns, "--ns")
    if args.modes:
        kw["modes"] = csv_list(args.modes)
        bad = [m for m in kw["modes"] if m not in MODES]
        if bad or not kw["modes"]:
            raise options.OptionError(f"--modes {args.modes!r}: use fwd, fwd+bwd or both")
    if args.dtype not in DTYPES:
        raise options.OptionError(f"--dtype {args.dtype!r}: use one of {', '.join(DTYPES)}")
    for opt in ("batch", "heads", "head_dim"):
        v = getattr(args, opt)
        if v is not None and v <= 0:
            raise options.OptionError(f"--{opt.replace('_', '-')} {v} must be positive")
    kw.update(dtype=args.dtype, heads=args.heads, head_dim=args.head_dim, batch=args.batch)
    return kw


def _settings(args):
    from stbench.regress.ab import ABSettings

    try:
        return ABSettings(rounds=args.rounds, threshold=args.threshold,
                          confidence=args.confidence, seed=args.seed,
                          check_rows=options.check_rows(args),
                          bench=options.bench_settings(args))
    except options.OptionError:
        raise
    except ValueError as exc:
        raise options.OptionError(f"{exc} (--rounds / --threshold / --confidence)") from None


def _sides(args):
    """(head, base, notes): the kernel trees and what the reader should know about them."""
    from stbench.regress import trees

    notes = ["the base's kernels run on this tree's layouts and device plan"]
    if args.base:
        base = trees.KernelTree.from_revision(args.base)
        if trees.layouts_differ(args.base):
            notes.append(f"layouts/ differs between {args.base} and this tree")
    else:
        base = trees.KernelTree.from_dir(args.base_dir, f"base {args.base_dir}")
    head = (trees.KernelTree.from_dir(args.head_dir, f"head {args.head_dir}") if args.head_dir
            else trees.InstalledKernels())
    return head, base, notes


def cmd_ab(args) -> int:
    from stbench.regress import problems, trees

    try:
        device = options.device_of(args)
        settings = _settings(args)
        entries = problems.regress_entries(options.backend_names(args), **_problem_kw(args))
        head, base, notes = _sides(args)
    except (options.OptionError, trees.TreeError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        return _run(args, device, settings, entries, head, base, notes)
    except trees.TreeError as exc:  # PlanMismatch met on the first call
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        head.close()
        base.close()


def _run(args, device, settings, entries, head, base, notes) -> int:
    from stbench import environment
    from stbench.commands.tables import console, say
    from stbench.regress import ab, output

    # the table on stdout; with another --format than table, the other lines go to stderr
    human = console(stderr=args.format != "table", width=args.width)
    t0 = time.time()
    with human.status("A/B...") as status:
        results = ab.run_ab(entries, head, base, device, settings,
                            progress=lambda s: status.update(f"A/B {s}"))
    head_label = head.label if args.head_dir else "head (this tree's kernels)"
    output.print_ab(results, console(width=args.width), head_label, base.label, settings,
                    args.format)
    say(human, f"verdicts: {output.counts(results)}")
    for n in notes:
        say(human, f"note: {n}")
    say(human, f"{len(entries)} problems x {settings.rounds} rounds in "
        f"{time.time() - t0:.1f} s")
    env = environment.collect()
    if args.json:
        from stbench.regress.baseline import manifest

        output.write_json(args.json, output.finite(dict(
            head=head_label, base=base.label, notes=notes, env=env.to_dict(),
            manifest=manifest(sys.argv[1:], t0, time.time(), env),
            settings=dict(rounds=settings.rounds, threshold=settings.threshold,
                          confidence=settings.confidence, seed=settings.seed,
                          check_rows=settings.check_rows, warmup_ms=settings.bench.warmup_ms,
                          rep_ms=settings.bench.rep_ms),
            results=[r.to_dict() for r in results])))
    if args.markdown:
        text = output.ab_markdown(results, head_label, base.label, settings)
        output.write_text(args.markdown, text + "".join(f"\n_{n}_\n" for n in notes))
    return ab.exit_code(results)


def register(subparsers) -> None:
    from stbench.regress.ab import AB_BENCH, DEFAULT_ROUNDS, DEFAULT_THRESHOLD

    p = subparsers.add_parser(
        "ab", help="this tree's kernels against a base revision's: interleaved, checked, a "
        "verdict per problem",
        description="Time this tree's kernels (head) and a base revision's (imported under "
        "another module name, on this tree's layouts and plan) interleaved in one process: "
        "several rounds, each on fresh inputs checked against the dense reference for both "
        "sides first. Per problem: the median ratio t_head / t_base over the rounds with a "
        "bootstrap interval, and a verdict (faster, same, slower, wrong, unmeasured, skipped). "
        "Exit code 1 when any problem is slower beyond the threshold or wrong.",
        formatter_class=options.HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--base", metavar="REV",
                     help="a git revision of this checkout (its kernels/ via git archive)")
    src.add_argument("--base-dir", metavar="PATH",
                     help="a checkout or extracted tree of the base (or its kernels folder), "
                     "for a machine without the git history")
    p.add_argument("--head-dir", metavar="PATH", default=None,
                   help="a kernel tree to use as head instead of the installed kernels (e.g. a "
                   "planted variant from python -m stbench.regress.plant)")
    p.add_argument("--layouts", default=None,
                   help="comma-separated layout specs (default: the regress set: causal, fixed, "
                   "local, st_mix, paper_fixed)")
    p.add_argument("--ns", default=None, help="comma-separated N (default: 4096,16384)")
    p.add_argument("--modes", default=None, help="fwd, fwd+bwd or both (default: both)")
    p.add_argument("--batch", type=int, default=None, help="B (default: 65536 / N)")
    p.add_argument("--heads", type=int, default=8, help="H")
    p.add_argument("--head-dim", type=int, default=64, help="D")
    p.add_argument("--dtype", default="bfloat16", help="input dtype")
    p.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS,
                   help="rounds (each: fresh inputs, check, head and base timed back to back)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="relative slowdown beyond which a significant change is 'slower'")
    p.add_argument("--confidence", type=float, default=0.95, help="of the bootstrap interval")
    options.add_common(p, AB_BENCH)
    p.set_defaults(func=cmd_ab)
