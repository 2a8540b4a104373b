"""Layout pictures: the images are the exact masks, files are written, large N stays sparse."""

import time

import numpy as np
import pytest
import torch

from stbench import layouts
from stbench.layouts import pictures

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == PNG_MAGIC


def test_token_image_is_the_token_mask_in_original_order():
    lay = layouts.strided(256, block=16, stride=16, heads=2)  # permuted: the strided transpose
    assert lay.perms is not None
    mask = lay.token_mask()
    for h in range(2):
        img, level, r = pictures.head_image(lay, h, pixels=256)
        assert (level, r) == ("token", 1)
        assert np.array_equal(img.astype(bool), mask[h].numpy())


def test_pooled_image_is_the_fraction_allowed():
    lay = layouts.causal(256, block=16)
    img, level, r = pictures.head_image(lay, 0, pixels=64)
    assert (level, r, img.shape) == ("token", 4, (64, 64))
    full = lay.token_mask()[0].reshape(64, 4, 64, 4).float().mean((1, 3)).numpy()
    assert np.allclose(img, full)
    assert img[0, 0] == pytest.approx(10 / 16)  # a 4x4 causal diagonal cell


def test_block_image_in_layout_order():
    lay = layouts.fixed(512, block=32, stride=128, heads=2, num_verts=2)
    img, level, r = pictures.head_image(lay, 1, level="block")
    assert (level, r) == ("block", 1)
    assert np.array_equal(img.astype(bool), lay.block_mask[1].numpy())
    with pytest.raises(ValueError, match="level"):
        pictures.head_image(lay, 0, level="pixels")


def test_large_n_uses_blocks_and_stays_sparse():
    lay = layouts.local(1 << 20, block=128, window=256, heads=1)
    t0 = time.perf_counter()
    img, level, r = pictures.head_image(lay, 0)
    assert level == "block" and img.shape == (512, 512) and r == 16
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="token picture"):
        pictures.head_image(lay, 0, level="token")


def test_save_layout_pictures(tmp_path):
    lay = layouts.fixed(256, block=16, stride=64, heads=3, num_verts=3)
    paths = pictures.save_layout_pictures(lay, tmp_path / "pics")
    names = sorted(p.name for p in paths)
    stem = "fixed_l_64_c_16_v_3__n256_b16"
    assert names == sorted([f"{stem}_heads.png"] + [f"{stem}_h{h}.png" for h in range(3)])
    assert all(_is_png(p) and p.stat().st_size > 2000 for p in paths)


def test_save_query_picture(tmp_path):
    lay = layouts.merged_strided(512, block=16, stride=32, heads=1)
    path = pictures.save_query_picture(lay, tmp_path / "q.png", width=32)
    assert _is_png(path)
    with pytest.raises(ValueError, match="query"):
        pictures.save_query_picture(lay, tmp_path / "bad.png", query=512)
    with pytest.raises(ValueError, match="width"):
        pictures.save_query_picture(lay, tmp_path / "bad.png", width=0 - 1)
