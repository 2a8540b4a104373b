"""The kernel regression gate: is this change slower, or wrong?

    stats      paired ratios, the bootstrap interval of their median, noise, thresholds, verdicts
    problems   the fixed regression problem set (kernel backends x layouts x N x fwd / fwd+bwd)
    trees      kernel trees side by side in one process (a base revision under another name)
    sample     one side on one problem: checked against dense, then timed
    ab         same-run A/B of two trees (``stbench ab``)
    calibrate  reference kernels that take machine drift out of a comparison across days
    gate       the run against a committed per-GPU baseline (``stbench regress``)
    baseline   that baseline's file: reports/baselines/<gpu>.jsonl
    output     tables, JSON and the Markdown summary for a pull request
    plant      planted faults (slower, wrong) in a copy of a kernel tree, to prove the gate
    devclock   a CUDA-event clock for pytest-benchmark

How a kernel author uses them: docs/regression.md.
"""
