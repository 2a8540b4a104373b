"""``stbench regress``: the regression problem set against this GPU model's committed baseline,
machine drift divided out by reference kernels measured in the same run.

    stbench regress                                    # against reports/baselines/<gpu>.jsonl
    stbench regress --runs 10 --json out.json          # ten independent runs (an A/A check)
    stbench regress --update-baseline                  # measure and write the baseline
    stbench regress --kernels-dir /tmp/planted         # a kernel tree other than the installed one

Every entry is checked against dense first (a wrong answer always fails). The threshold of an
entry is max(--floor, --k x its noise measured by repetition); see stbench.regress.gate. Exit
code: 1 when any run has an entry slower beyond its threshold or wrong, 2 for a usage error
(no GPU, no baseline, a baseline of another GPU), else 0.
"""

from __future__ import annotations

import sys
import time

from stbench.regress import options

PROG = "stbench regress"


def regress(entries, side, device, settings, baseline_path, *, update: bool, runs: int,
            console, argv=None, json_path=None, markdown_path=None, sizes=None,
            progress=None, fmt: str = "table", table_console=None) -> int:
    """Measure ``runs`` times and judge against the baseline (or write it with ``update``);
    returns the exit code. Raises baseline.BaselineError for a missing or foreign baseline.
    The verdict table goes to ``table_console`` (default ``console``) in ``fmt``, the other
    lines to ``console``."""
    from stbench import environment
    from stbench.commands.tables import say
    from stbench.regress import baseline, gate, output, stats

    env = environment.collect()
    t0 = time.time()
    if update:
        run = gate.measure_run(entries, side, device, settings, sizes, progress=progress)
        why = gate.baseline_refusal(run)
        if why is not None:
            say(console, f"{PROG}: baseline not written: {why}")
            return 1
        header = dict(env=env.to_dict(), manifest=baseline.manifest(argv, t0, time.time(), env),
                      settings=settings.to_dict(), references=run.references)
        path = baseline.write(baseline_path, output.finite(header),
                              [output.finite(m.to_dict()) for m in run.entries])
        ok = sum(m.status == "ok" for m in run.entries)
        say(console, f"wrote {path}: {ok} of {len(run.entries)} entries measured, "
            f"{settings.passes} passes, {run.duration_s:.1f} s (checks {run.check_s:.1f} s)")
        for line in run.skipped_references:
            say(console, f"reference skipped: {line}")
        return 0
    base = baseline.read(baseline_path)
    baseline.check_gpu(base, env.to_dict())
    baseline.check_timer(base, settings.to_dict()["bench"])
    notes = [f"baseline {base_path_label(base)}"]
    notes += [f"environment changed: {d}" for d in baseline.env_differences(base.env,
                                                                             env.to_dict())]
    all_runs, records = [], []
    for i in range(runs):
        run = gate.measure_run(entries, side, device, settings, sizes, seed_offset=i,
                               progress=progress)
        results = gate.compare(run, base.entries, base.references, settings)
        d = gate.drift(run, base.references)
        all_runs.append(results)
        records.append(dict(run=i, drift=d, duration_s=run.duration_s, check_s=run.check_s,
                            references=run.references,
                            skipped_references=list(run.skipped_references),
                            results=[r.to_dict() for r in results],
                            measured=[m.to_dict() for m in run.entries]))
        failing = [r for r in results if r.verdict in stats.FAILING]
        worst = max((r for r in results if r.ratio is not None), key=lambda r: r.ratio,
                    default=None)
        say(console,
            f"run {i + 1}/{runs}: {output.counts(results)}; drift "
            f"{'-' if d is None else f'{100 * (d - 1):+.1f}%'}; largest ratio "
            f"{'-' if worst is None else f'{worst.ratio:.3f} ({worst.label()})'}; "
            f"{run.duration_s:.1f} s")
        for r in failing:
            why = (f"ratio {output.fmt_ratio(r.ratio)} > 1 + {output.fmt_pct(r.threshold)}"
                   if r.verdict == stats.SLOWER else r.reason)
            say(console, f"  {r.verdict}: {r.label()}: {why}", style="red")
    title = f"stbench regress against {base_path_label(base)}"
    caption = (f"ratio: (time / reference unit) now over the baseline's, median of "
               f"{settings.passes} passes; threshold max({settings.floor:.1%}, "
               f"{settings.k:g} x noise)")
    output.print_gate(all_runs[-1], table_console or console, title, caption, fmt)
    for n in notes[1:]:
        say(console, f"note: {n}")
    failed_runs = sum(any(r.verdict in stats.FAILING for r in run) for run in all_runs)
    say(console, f"{failed_runs} of {runs} runs raised an alarm; {time.time() - t0:.1f} s")
    if json_path:
        output.write_json(json_path, output.finite(dict(
            env=env.to_dict(), manifest=baseline.manifest(argv, t0, time.time(), env),
            settings=settings.to_dict(), baseline=str(base.path),
            baseline_manifest=base.manifest, notes=notes, failed_runs=failed_runs,
            runs=records)))
    if markdown_path:
        output.write_text(markdown_path, output.gate_markdown(all_runs, title, notes))
    return 1 if failed_runs else 0


def base_path_label(base) -> str:
    commit = (base.manifest.get("commit") or "?")[:10]
    return f"{base.path} ({commit}, {base.manifest.get('date', '?')})"


def cmd_regress(args) -> int:
    from stbench.regress import baseline, gate, problems, trees

    try:
        device = options.device_of(args)
        if device.type != "cuda":
            raise options.OptionError(
                "needs a CUDA GPU: a baseline is per GPU model; without one, compare two trees "
                "with `stbench ab` or run the CPU tests")
        if args.runs < 1:
            raise options.OptionError(f"--runs {args.runs} must be >= 1")
        if args.update_baseline and args.runs != 1:
            raise options.OptionError("--update-baseline measures once: drop --runs")
        try:
            settings = gate.GateSettings(passes=args.passes, floor=args.floor, k=args.k,
                                         seed=args.seed, check_rows=options.check_rows(args),
                                         bench=options.bench_settings(args))
        except options.OptionError:
            raise
        except ValueError as exc:
            raise options.OptionError(f"{exc} (--passes / --floor / --k)") from None
        entries = problems.regress_entries(options.backend_names(args))
        import torch

        path = args.baseline or baseline.default_path(torch.cuda.get_device_name(device))
        side = (trees.KernelTree.from_dir(args.kernels_dir, f"kernels {args.kernels_dir}")
                if args.kernels_dir else trees.InstalledKernels())
    except (options.OptionError, trees.TreeError, ValueError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    from stbench.commands.tables import console as make_console

    console = make_console(stderr=args.format != "table", width=args.width)
    try:
        with console.status("regress...") as status:
            return regress(entries, side, device, settings, path, update=args.update_baseline,
                           runs=args.runs, console=console, argv=sys.argv[1:],
                           fmt=args.format, table_console=make_console(width=args.width),
                           json_path=args.json, markdown_path=args.markdown,
                           progress=lambda s: status.update(f"regress: {s}"))
    except (baseline.BaselineError, trees.TreeError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    finally:
        side.close()


def register(subparsers) -> None:
    from stbench.regress.gate import DEFAULT_FLOOR, DEFAULT_K, DEFAULT_PASSES, GATE_BENCH

    p = subparsers.add_parser(
        "regress", help="the regression problem set against this GPU's committed baseline",
        description="Check (against dense) and time every kernel backend on the regression "
        "problem set (causal, fixed, local, st_mix, paper_fixed x N 4096, 16384 x fwd, fwd+bwd) "
        "with reference kernels (a bf16 matmul, a device copy, SDPA) in the same passes; judge "
        "each entry's time in reference units against the committed baseline of this GPU "
        "model. Exit code 1 when an entry is slower beyond max(floor, k x noise) or wrong.",
        formatter_class=options.HelpFormatter)
    p.add_argument("--baseline", metavar="FILE", default=None,
                   help="baseline file (default: reports/baselines/<gpu>.jsonl)")
    p.add_argument("--update-baseline", action="store_true",
                   help="measure and write the baseline (with the environment and a manifest) "
                   "instead of judging")
    p.add_argument("--runs", type=int, default=1,
                   help="independent runs (fresh inputs each), each judged on its own")
    p.add_argument("--passes", type=int, default=DEFAULT_PASSES,
                   help="timing passes per run (their spread is the noise)")
    p.add_argument("--floor", type=float, default=DEFAULT_FLOOR,
                   help="the smallest relative threshold")
    p.add_argument("--k", type=float, default=DEFAULT_K,
                   help="threshold = max(floor, k x noise)")
    p.add_argument("--kernels-dir", metavar="PATH", default=None,
                   help="run this kernel tree (a checkout, or its kernels folder) instead of "
                   "the installed kernels")
    options.add_common(p, GATE_BENCH)
    p.set_defaults(func=cmd_regress)
