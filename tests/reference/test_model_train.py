"""Training, checkpoints (safe load, validation, exact resume), evaluation and sampling on the
tiny preset and the pydoc fixture."""

import json
from fractions import Fraction

import numpy as np
import pytest
import torch

from stbench.reference import bpd, data, train
from stbench.reference.model import SparseTransformer, preset

FAST = dict(batch_size=2, lr=3e-3, warmup=2, eval_every=3, eval_batches=2, eval_batch_size=2,
            log_every=1)


@pytest.fixture(scope="module")
def pydoc():
    return data.load("pydoc")


def _run(tmp, splits, steps, stop_after=None, resume=False):
    cfg = preset("tiny")
    tcfg = train.TrainConfig(steps=steps, **FAST)
    train.train(cfg, tcfg, splits, tmp, resume=resume, stop_after=stop_after)
    return train.load_checkpoint(tmp / "checkpoint.pt")


def test_train_logs_and_learns(tmp_path, pydoc):
    state = _run(tmp_path, pydoc, steps=6)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert log[0]["event"] == "start" and log[0]["model_config"] == preset("tiny").to_dict()
    steps = [r for r in log if r["event"] == "train"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for key in ("loss_bpd", "tokens_per_s", "peak_mem_bytes", "lr"):
        assert all(np.isfinite(r[key]) for r in steps), key
    assert steps[-1]["loss_bpd"] < steps[0]["loss_bpd"] - 0.5  # from ~8 bits: byte frequencies
    evals = [r for r in log if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [3, 6] and evals[-1]["bpd"] < 8.0
    assert state["step"] == 6


def test_resume_continues_exactly(tmp_path, pydoc):
    straight = _run(tmp_path / "a", pydoc, steps=5)
    first = _run(tmp_path / "b", pydoc, steps=5, stop_after=2)
    assert first["step"] == 2
    resumed = _run(tmp_path / "b", pydoc, steps=5, resume=True)
    assert resumed["step"] == 5
    for k, v in straight["model"].items():
        torch.testing.assert_close(resumed["model"][k], v, rtol=1e-6, atol=1e-7)


def test_bad_checkpoints_are_refused_with_reasons(tmp_path):
    with pytest.raises(FileNotFoundError, match="stbench model train"):
        train.load_checkpoint(tmp_path / "none.pt")
    torch.save({"format": "other"}, tmp_path / "a.pt")
    with pytest.raises(ValueError, match="not a stbench-sparse-transformer"):
        train.load_checkpoint(tmp_path / "a.pt")

    torch.save({"x": Fraction(1, 3)}, tmp_path / "b.pt")  # arbitrary objects: never unpickled
    with pytest.raises(ValueError, match="not a loadable"):
        train.load_checkpoint(tmp_path / "b.pt")
    torch.manual_seed(0)
    model = SparseTransformer(preset("tiny"))
    g = torch.Generator().manual_seed(0)
    cfg = train.TrainConfig()
    train.save_checkpoint(tmp_path / "c.pt", model, None, cfg, 0, g)
    state = torch.load(tmp_path / "c.pt", weights_only=True)
    state["model_config"] = json.dumps({**preset("tiny").to_dict(), "layers": 3})
    torch.save(state, tmp_path / "d.pt")
    with pytest.raises(ValueError, match="weights do not match"):
        train.model_from_checkpoint(tmp_path / "d.pt")


def test_full_split_evaluation_counts_every_byte(pydoc):
    torch.manual_seed(0)
    model = SparseTransformer(preset("tiny"))
    small = data.TextSequences(pydoc["validation"][:1000], 128)
    res = bpd.evaluate(model, small, batch_size=4)
    assert res.targets == 999 and res.batches == small.num_batches(4)
    assert 7.5 < res.bpd < 8.5  # an untrained model: about log2(256) = 8 bits per byte


def test_sampling_text_and_image_completion():
    torch.manual_seed(0)
    model = SparseTransformer(preset("tiny"))
    out = train.sample_text(model, b"def", 20, num=2, seed=3)
    assert len(out) == 2 and all(len(s) == 20 and s.startswith(b"def") for s in out)
    assert out == train.sample_text(model, b"def", 20, num=2, seed=3)  # seeded
    icfg = preset("tiny", vocab=258, n_ctx=64, image_shape=(8, 8, 1), layers=1)
    imodel = SparseTransformer(icfg)
    imgs = np.random.default_rng(0).integers(0, 256, (2, 6, 7, 1), dtype=np.uint8)
    done = train.complete_images(imodel, imgs, given_rows=3, seed=0)
    assert done.shape == imgs.shape and done.dtype == np.uint8
    assert np.array_equal(done[:, :3], imgs[:, :3])
