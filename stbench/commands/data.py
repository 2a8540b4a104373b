"""``stbench data``: prepare the model's datasets as compact arrays, or show what is available.

    stbench data prepare --out DIR [--datasets wiki,fashion_mnist]
    stbench data info [--data-dir DIR]

``prepare`` writes ``<dataset>_<split>.npy`` (uint8) and ``manifest.json`` (shapes, SHA-256,
source, licence) under DIR; hand DIR to a machine with no network and pass ``--data-dir DIR`` to
``stbench model``.
"""

from __future__ import annotations

import argparse

from stbench.commands.tables import Column, Rows, add_format_option, emit


def _names(text: str) -> list[str]:
    from stbench.reference import data

    names = [n.strip() for n in text.split(",") if n.strip()]
    for n in names:
        data.info(n)  # ValueError naming the choices
    return names


def _prepare(args) -> int:
    from stbench.reference import data

    # DataMissing and ValueError reach the CLI's handler: one line, exit code 2
    manifest = data.prepare(args.out, _names(args.datasets))
    for name, entry in manifest["datasets"].items():
        for split, s in entry["splits"].items():
            print(f"{name:14s} {split:10s} {str(tuple(s['shape'])):22s} {s['file']}")
    print(f"wrote {args.out}/{data.MANIFEST}")
    return 0


def _info(args) -> int:
    from stbench.reference import data

    rows = []
    for name, meta in data.DATASETS.items():
        row = dict(dataset=name, kind=meta.kind, licence=meta.licence)
        try:
            splits = data.load(name, args.data_dir, verify=False)
            row.update(status="ok", **{s: list(splits[s].shape) for s in data.SPLITS})
        except (data.DataMissing, data.DataError) as exc:
            row["status"] = str(exc)
        rows.append(row)
    emit(Rows("datasets" + (f" in {args.data_dir}" if args.data_dir else " (installed)"),
              (Column("dataset"), Column("kind"), Column("status"),
               *(Column(s, fmt=lambda x: str(tuple(x))) for s in data.SPLITS),
               Column("licence")), tuple(rows)), args.format, args.width)
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
    add_format_option(inf)
    inf.set_defaults(func=_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])
