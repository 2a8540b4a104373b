"""``stbench model train|eval|sample`` and ``stbench data prepare|info`` end to end on the
pydoc fixture (prepared folder, as a GPU machine without network would get it)."""

import json

import pytest

from stbench.cli import main


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("data")
    assert main(["data", "prepare", "--out", str(out), "--datasets", "pydoc"]) == 0
    return out


def test_train_eval_sample_resume(prepared, tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--device", "cpu", "--data-dir", str(prepared)]
    assert main(["model", "train", "--preset", "tiny", "--out", str(run), "--steps", "2",
                 "--eval-every", "2", "--eval-batches", "1", "--batch-size", "2", *common]) == 0
    assert main(["model", "train", "--preset", "tiny", "--out", str(run), "--steps", "3",
                 "--eval-every", "3", "--eval-batches", "1", "--batch-size", "2", "--resume",
                 *common]) == 0
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["event"] == "start"] == [0, 2]
    capsys.readouterr()
    assert main(["model", "eval", "--checkpoint", str(run / "checkpoint.pt"), "--split", "test",
                 "--batch-size", "32", *common]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["full"] and record["targets"] == 23354 - 1 and record["step"] == 3
    assert main(["model", "sample", "--checkpoint", str(run / "checkpoint.pt"), "--out",
                 str(tmp_path / "s"), "--num", "1", "--length", "24", "--prime", "for",
                 *common]) == 0
    assert (tmp_path / "s" / "samples.txt").read_text().startswith("for")


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert main(["model", "eval", "--checkpoint", str(tmp_path / "x.pt"), "--device", "cpu"]) == 2
    assert "stbench model train" in capsys.readouterr().err
    assert main(["model", "parity", "--preset", "tiny", "--backends", "dense,nope",
                 "--device", "cpu"]) == 2
    assert "not registered" in capsys.readouterr().err
    assert main(["model", "train", "--preset", "tiny", "--out", str(tmp_path), "--set", "layers",
                 "--device", "cpu"]) == 2
    assert "key=value" in capsys.readouterr().err


def test_data_info_lists_datasets(prepared, capsys):
    assert main(["data", "info", "--data-dir", str(prepared)]) == 0
    out = capsys.readouterr().out
    assert "pydoc" in out and "wiki" in out


def test_sample_image_completions_picture(tmp_path, monkeypatch, capsys):
    import numpy as np
    import torch

    from stbench.reference import data, train
    from stbench.reference.model import SparseTransformer, preset

    cfg = preset("tiny", vocab=258, n_ctx=64, image_shape=(8, 8, 1), layers=1)
    torch.manual_seed(0)
    ckpt = tmp_path / "img.pt"
    train.save_checkpoint(ckpt, SparseTransformer(cfg), None,
                          train.TrainConfig(dataset="fashion_mnist"), 0, torch.Generator())
    imgs = np.random.default_rng(0).integers(0, 256, (3, 6, 7, 1), dtype=np.uint8)
    monkeypatch.setattr(data, "load", lambda name, data_dir=None: {"test": imgs})
    assert main(["model", "sample", "--checkpoint", str(ckpt), "--out", str(tmp_path / "s"),
                 "--num", "2", "--device", "cpu"]) == 0
    assert "top 3 rows given" in capsys.readouterr().out
    assert (tmp_path / "s" / "completions.png").stat().st_size > 1000
