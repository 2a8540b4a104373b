"""The standard problems as data: the stride rule, the layouts' standard densities and
DESIGN.md, fit_block, reblock and st_mix's heads."""

from dataclasses import replace

import pytest
import torch

from stbench import layouts, problems


@pytest.mark.parametrize("n, l", [(1024, 128), (4096, 128), (16384, 128), (32768, 256),
                                  (65536, 256), (1048576, 1024)])
def test_stride_rule(n, l):
    assert problems.stride_for(n) == l


@pytest.mark.parametrize("name, density", [("causal", 0.50), ("local", 0.0058),
                                           ("strided", 0.0029), ("fixed", 0.129),
                                           ("st_mix", 0.0044)])
def test_standard_block_densities_at_65536_match_targets(name, density):
    lay = problems.layout_spec(name).build(65536, 8)
    assert lay.block == 128 and lay.name == name
    assert lay.block_density == pytest.approx(density, rel=0.03)  # given to 2-3 digits


@pytest.mark.parametrize("name, density", [("paper_fixed", 0.13), ("paper_fixed_128", 0.505)])
def test_paper_fixed_densities_at_12288_match_design(name, density):
    # DESIGN.md: enwik8 fixed, l = 128, c = 32, N = 12288: 13% at block 32, 50.5% at block 128
    lay = problems.layout_spec(name).build(12288, 8)
    assert lay.block_density == pytest.approx(density, abs=1e-3)


def test_fit_block_and_reblock_keep_the_token_pattern():
    spec = problems.layout_spec("strided")
    with pytest.raises(layouts.LayoutError):
        spec.build(1024, 2)  # N / l = 8: no block fits
    fitted = replace(spec, fit_block=True).build(2048, 2)
    assert fitted.block == 16
    a = problems.layout_spec("paper_union").build(512, 2)
    b = problems.layout_spec("paper_union_128").build(512, 2)
    assert (a.block, b.block) == (16, 128)
    assert torch.equal(a.token_mask(), b.token_mask())


def test_st_mix_is_local_on_even_heads_and_strided_on_odd():
    n, l = 256, 16
    mix = problems.LayoutSpec("st_mix", "st_mix", 16, (("stride", l),)).build(n, 4)
    loc = layouts.local(n, block=16, window=l, heads=4).token_mask()
    strd = layouts.strided(n, block=16, stride=l, heads=4).token_mask()
    m = mix.token_mask()
    assert torch.equal(m[0::2], loc[0::2]) and torch.equal(m[1::2], strd[1::2])
    # the fallback composition gives the same pattern
    alt = problems.mix_heads(layouts.local(n, block=16, window=l, heads=4),
                             layouts.strided(n, block=16, stride=l, heads=4), "st_mix")
    assert torch.equal(alt.token_mask(), m)


def test_problem_inputs_are_seeded_and_validated():
    p = problems.Problem(problems.layout_spec("causal"), 256, 2, 2, 16, "float32", "fwd+bwd")
    a, b = p.inputs("cpu"), p.inputs("cpu")
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and a[0].requires_grad
    assert a[0].shape == (2, 2, 256, 16)
    with pytest.raises(ValueError, match="mode="):
        replace(p, mode="bwd")
    with pytest.raises(ValueError, match="dtype='int8'"):
        replace(p, dtype="int8")
    assert len(problems.standard_problems()) == 7 * 5 * 2
