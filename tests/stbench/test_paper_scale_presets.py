"""The paper and scale presets, and the peer ``flex_predicate`` they compare against: the
paper's token rules are exactly the layouts' masks, and FlexAttention on create_block_mask over
a rule gives the dense reference's answer (eager, on the CPU)."""

import pytest
import torch

from stbench import backends, flex_predicate, problems
from stbench.reference import dense
from stbench.sweep import SweepConfig, plan_groups


@pytest.mark.parametrize("name", sorted(problems.TOKEN_RULES))
def test_token_rules_are_the_layouts_exact_masks(name):
    layout = problems.layout_spec(name).build(1024, 2)
    idx = torch.arange(1024)
    rule = problems.TOKEN_RULES[name](idx.view(-1, 1), idx.view(1, -1))
    assert torch.equal(layout.token_mask(), rule.expand(2, -1, -1))


def test_flex_predicate_supports_only_layouts_with_a_rule():
    assert flex_predicate.supports(problems.layout_spec("paper_union").build(1024, 1)) is None
    why = flex_predicate.supports(problems.layout_spec("causal").build(1024, 1))
    assert "no token rule" in why and "paper_fixed" in why
    assert backends.info("flex_predicate").peer


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_predicate_matches_dense_eagerly_on_the_cpu(gen):
    pytest.importorskip("torch.nn.attention.flex_attention")
    layout = problems.layout_spec("paper_fixed_128").build(256, 2)
    q, k, v = (torch.randn(1, 2, 256, 16, generator=gen) for _ in range(3))
    out = flex_predicate.attention(q, k, v, layout, 0.25, compiled=False)
    ref = dense.dense_attention_reference(q, k, v, layout, 0.25)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    with pytest.raises(ValueError, match="unknown to backend 'flex_predicate'"):
        flex_predicate.attention(q, k, v, layout, 0.25, {"BLOK_M": 64}, compiled=False)


def test_paper_preset_runs_the_exact_masks_beside_both_flex_peers():
    cfg = SweepConfig.preset("paper")
    assert {"flex", "flex_predicate", "triton", "cupy"} <= set(cfg.backends)
    assert {s.name for s in cfg.layouts} <= set(problems.TOKEN_RULES)
    assert [(g.n, cfg.batch_for(g.n)) for g in plan_groups(cfg)][::4] == [(12288, 5), (65536, 1)]


def test_scale_preset_is_one_sequence_of_up_to_a_million_tokens():
    cfg = SweepConfig.preset("scale")
    assert max(cfg.ns) == 2**20 and {cfg.batch_for(n) for n in cfg.ns} == {1}
    assert [s.name for s in cfg.layouts] == ["st_mix"]
    assert {"flex", "flex_flash", "fa4"} <= set(cfg.backends)  # every peer of the 1M target
