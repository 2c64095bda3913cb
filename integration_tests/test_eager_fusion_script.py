"""benchmarks/align/eager_fusion_ab.py: its model swaps compute what the unchanged model does."""

from __future__ import annotations

import copy

import pytest
import torch


@pytest.fixture
def fusion(align_script):
    return align_script("eager_fusion_ab")


@pytest.mark.parametrize("rms,fuse", [(True, False), (False, True), (True, True)])
def test_swapped_model_matches_the_unchanged_one_in_fp32(fusion, rms, fuse):
    from glta_align.llm import load_tokenizer, tiny_llm

    stock = tiny_llm(load_tokenizer(), hidden_size=64, num_layers=2, seed=0).backbone.float()
    swapped = fusion.patch(copy.deepcopy(stock), rms=rms, fuse=fuse)
    kinds = {type(m).__name__ for m in swapped.modules()}
    assert ("FusedRMSNorm" in kinds) == rms and ("_Member" in kinds) == fuse  # really swapped
    x = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0)) * 0.1
    t_stock, g_stock = fusion.step(stock, x)
    t_swap, g_swap = fusion.step(swapped, x)
    assert t_stock > 0 and t_swap > 0
    torch.testing.assert_close(g_swap, g_stock, rtol=1e-4, atol=1e-6)  # input gradients
    with torch.no_grad():
        out = swapped(inputs_embeds=x).last_hidden_state
        ref = stock(inputs_embeds=x).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
