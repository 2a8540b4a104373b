"""Data-parallel training (reference/parallel.py): gradient accumulation gives the global
batch's gradient; on 2 CPU processes (torchrun through ``--devices``, gloo) a checkpoint of one
process resumes, the loss matches one process at the same global batch, and the validation bits
per dim evaluated sharded over the ranks equals the unsharded value."""

import json

import pytest
import torch

from stbench import distributed
from stbench.cli import main
from stbench.reference import bpd, data, parallel, train
from stbench.reference.model import SparseTransformer, preset

# Two runs of the same fp32 steps differ only in the order of floating-point sums (the ranks'
# halves of the batch, the all-reduce of gradients): observed up to 1e-6 bpd after 4 steps of
# the tiny preset; 1e-5 leaves room. The sharded and unsharded evaluations of one checkpoint
# differ in the order of float64 sums only: 1e-9.
LOSS_TOL_BPD = 1e-5
EVAL_TOL_BPD = 1e-9
STEPS, BATCH = 4, 4
TRAIN = dict(steps=STEPS, batch_size=BATCH, lr=3e-3, warmup=2, eval_every=STEPS,
             eval_batch_size=BATCH, eval_batches=3, log_every=1, dataset="pydoc")


@pytest.fixture(scope="module")
def pydoc():
    return data.load("pydoc")


def _records(path, event):
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["event"] == event]


def test_local_batch_refuses_uneven_splits():
    assert parallel.local_batch(8, 2, None) == (4, 4)
    assert parallel.local_batch(8, 2, 2) == (4, 2)
    with pytest.raises(ValueError, match="multiple of the 3 processes"):
        parallel.local_batch(8, 3, None)
    with pytest.raises(ValueError, match="micro_batch=3 must divide"):
        parallel.local_batch(8, 2, 3)


def test_micro_batches_accumulate_the_whole_batch_gradient(pydoc):
    torch.manual_seed(0)
    model = SparseTransformer(preset("tiny"))
    seqs = train.sequences_for(model.cfg, pydoc["train"])
    batch = seqs.sample(4, torch.Generator().manual_seed(1))
    grads, losses = [], []
    for micro in (None, 1):
        model.zero_grad(set_to_none=True)
        losses.append(parallel.train_step(model, batch, distributed.Ranks(), micro, "cpu"))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    reference = bpd.batch_bpd(model, batch)
    assert losses[0] == pytest.approx(float(reference.detach()), abs=1e-6)
    assert losses[1] == pytest.approx(losses[0], abs=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


@pytest.mark.filterwarnings("ignore:Unable to enable fault handler")
def test_two_processes_resume_and_match_one_process(tmp_path, pydoc):
    cfg, tcfg = preset("tiny"), train.TrainConfig(**TRAIN)
    straight = tmp_path / "one"
    train.train(cfg, tcfg, pydoc, straight)
    shared = tmp_path / "two"
    train.train(cfg, tcfg, pydoc, shared, stop_after=2)  # one process, then 2 resume it
    argv = ["model", "train", "--preset", "tiny", "--out", str(shared), "--steps", str(STEPS),
            "--batch-size", str(BATCH), "--lr", "3e-3", "--warmup", "2", "--eval-every",
            str(STEPS), "--eval-batches", "3", "--log-every", "1", "--device", "cpu",
            "--resume", "--devices", "2", "--micro-batch", "1"]
    assert main(argv) == 0

    one, two = (_records(p / "log.jsonl", "train") for p in (straight, shared))
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert b["loss_bpd"] == pytest.approx(a["loss_bpd"], abs=LOSS_TOL_BPD)
    start = _records(shared / "log.jsonl", "start")[-1]
    assert start["world_size"] == 2 and start["step"] == 2 and start["micro_batch"] == 1
    (eval_one,), (eval_two,) = (_records(p / "log.jsonl", "eval") for p in (straight, shared))
    assert eval_two["bpd"] == pytest.approx(eval_one["bpd"], abs=LOSS_TOL_BPD)
    assert eval_two["targets"] == eval_one["targets"]

    model, state = train.model_from_checkpoint(shared / "checkpoint.pt")
    assert state["step"] == STEPS
    whole = bpd.evaluate(model, train.sequences_for(cfg, pydoc["validation"]), BATCH,
                         max_batches=3)
    assert whole.bpd == pytest.approx(eval_two["bpd"], abs=EVAL_TOL_BPD)  # sharded == whole
    assert whole.targets == eval_two["targets"]
