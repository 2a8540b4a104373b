"""The Sparse Transformer model: shapes, configs, initialisation, causality over every
factorised pattern, and that checkpointing and autocast do not change the function."""

import math

import pytest
import torch

from stbench.reference.model import (
    INIT_STD, PRESETS, ModelConfig, SparseTransformer, layer_layout, preset,
)

# The tiny preset per pattern: fixed needs stride % block == 0 (and stride > block to be sparse).
PATTERNS = {
    "dense": {},
    "strided": {},
    "local": {},
    "fixed": {"stride": 32},
}


def tiny(attention, **kw):
    return preset("tiny", attention=attention, **{**PATTERNS[attention], **kw})


@pytest.mark.parametrize("attention", sorted(PATTERNS))
def test_logits_shape_and_causality(attention, gen):
    torch.manual_seed(0)
    model = SparseTransformer(tiny(attention)).eval()
    x = torch.randint(0, 256, (2, 128), generator=gen)
    y = model(x)
    assert y.shape == (2, 128, 256) and torch.isfinite(y).all()
    t = 77  # changing token t must leave every position before t unchanged
    x2 = x.clone()
    x2[:, t] = (x2[:, t] + 1) % 256
    y2 = model(x2)
    assert torch.equal(y[:, :t], y2[:, :t])
    assert not torch.equal(y[:, t:], y2[:, t:])


def test_strided_layers_alternate_local_and_strided():
    cfg = preset("tiny", layers=4)
    names = [layer_layout(cfg, i).name for i in range(4)]
    assert [n.split("(")[0] for n in names] == ["local", "strided", "local", "strided"]
    strided = layer_layout(cfg, 1)
    mask = strided.token_mask()[0]
    q, k = torch.arange(128)[:, None], torch.arange(128)[None]
    assert torch.equal(mask, (k <= q) & ((q - k) % cfg.stride == 0))


def test_presets_build_their_layouts():
    for name, cfg in PRESETS.items():
        for i in range(min(cfg.layers, 2)):
            lay = layer_layout(cfg, i)
            assert lay.n_ctx == cfg.n_ctx and lay.heads == cfg.heads, name
    assert PRESETS["text-8k"].n_ctx == 8192
    assert PRESETS["images"].image_shape == (32, 32, 1)


def test_config_round_trip_and_errors():
    cfg = PRESETS["images"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown keys"):
        ModelConfig.from_dict({**cfg.to_dict(), "n_layer": 3})
    with pytest.raises(ValueError, match="attention="):
        preset("tiny", attention="sparse")
    with pytest.raises(ValueError, match="multiple of heads"):
        preset("tiny", d_model=65)
    with pytest.raises(ValueError, match="image_shape"):
        preset("tiny", image_shape=(8, 8, 1))
    with pytest.raises(ValueError, match="preset="):
        preset("huge")
    model = SparseTransformer(preset("tiny"))
    with pytest.raises(ValueError, match="n_ctx=128"):
        model(torch.zeros(1, 64, dtype=torch.long))


def test_residual_projections_scaled_at_init():
    torch.manual_seed(0)
    cfg = preset("tiny", d_model=256, heads=4, layers=8)
    model = SparseTransformer(cfg)
    resid = INIT_STD / math.sqrt(2 * cfg.layers)
    for block in model.blocks:
        for w in (block.attn.proj.weight, block.mlp.fc2.weight):
            assert abs(w.std().item() / resid - 1) < 0.05
        assert abs(block.attn.qkv.weight.std().item() / INIT_STD - 1) < 0.05
        assert torch.equal(block.ln1.weight, torch.ones(256))


def test_image_position_embedding_is_row_column_channel():
    cfg = preset("tiny", vocab=258, n_ctx=128, image_shape=(8, 8, 2))
    model = SparseTransformer(cfg)
    pos = model.position_embedding()  # (N, C), raster order (row, column, channel)
    assert pos.shape == (128, cfg.d_model)
    r, c, ch = 3, 5, 1
    expect = model.row_emb[r, 0, 0] + model.col_emb[0, c, 0] + model.chan_emb[0, 0, ch]
    torch.testing.assert_close(pos[(r * 8 + c) * 2 + ch], expect)


def test_gradient_checkpointing_gives_the_same_gradients(gen):
    x = torch.randint(0, 256, (2, 128), generator=gen)
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = SparseTransformer(preset("tiny", checkpoint=ckpt, dropout=0.1))
        torch.manual_seed(1)  # same dropout masks; checkpoint replays the RNG state
        model(x).logsumexp(-1).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_bf16_autocast_runs(gen):
    torch.manual_seed(0)
    model = SparseTransformer(preset("tiny"))
    x = torch.randint(0, 256, (1, 128), generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    torch.testing.assert_close(y.float(), model(x), atol=0.1, rtol=0.1)
