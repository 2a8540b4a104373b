"""``stbench data``: prepare the model's datasets as compact arrays, or show what is available.

    stbench data prepare --out DIR [--datasets wiki,fashion_mnist]
    stbench data info [--data-dir DIR]

``prepare`` writes ``<dataset>_<split>.npy`` (uint8) and ``manifest.json`` (shapes, SHA-256,
source, licence) under DIR; hand DIR to a machine with no network and pass ``--data-dir DIR`` to
``stbench model``.
"""

from __future__ import annotations

import argparse


def _names(text: str) -> list[str]:
    from stbench.reference import data

    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        data.info(n)  # ValueError naming the choices
    return names


def _prepare(args) -> int:
    from rich.console import Console

    from stbench.reference import data

    console = Console()
    try:
        manifest = data.prepare(args.out, _names(args.datasets))
    except (data.DataMissing, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 2
    for name, entry in manifest["datasets"].items():
        for split, s in entry["splits"].items():
            console.print(f"{name:14s} {split:10s} {str(tuple(s['shape'])):22s} {s['file']}")
    console.print(f"wrote {args.out}/{data.MANIFEST}")
    return 0


def _info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from stbench.reference import data

    console = Console()
    table = Table(title="datasets" + (f" in {args.data_dir}" if args.data_dir else " (installed)"))
    for col in ("dataset", "kind", "status", "train", "validation", "test", "licence"):
        table.add_column(col)
    for name, meta in data.DATASETS.items():
        try:
            splits = data.load(name, args.data_dir, verify=False)
            shapes = [str(tuple(splits[s].shape)) for s in data.SPLITS]
            status = "ok"
        except (data.DataMissing, data.DataError) as exc:
            shapes, status = ["-"] * 3, str(exc)
        table.add_row(name, meta.kind, status, *shapes, meta.licence)
    console.print(table)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "data", help="prepare / inspect the model's datasets", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(title="actions", metavar="ACTION")
    prep = sub.add_parser("prepare", help="write the splits as .npy + manifest.json under --out")
    prep.add_argument("--out", required=True, help="output folder")
    prep.add_argument("--datasets", default="wiki,fashion_mnist",
                      help="comma-separated: wiki, fashion_mnist, pydoc (default: %(default)s)")
    prep.set_defaults(func=_prepare)
    inf = sub.add_parser("info", help="list datasets, their splits and whether they are present")
    inf.add_argument("--data-dir", default=None,
                     help="a prepared folder (default: the installed sources)")
    inf.set_defaults(func=_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
