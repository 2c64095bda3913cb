"""benchmarks/align/int8_layout.py: both int8 layouts give identical products and texts."""

from __future__ import annotations

import copy

import pytest


@pytest.fixture
def int8_layout(align_script):
    return align_script("int8_layout")


def test_time_layers_compares_identical_products(int8_layout, monkeypatch):
    import glta_align.int8 as int8

    monkeypatch.setattr(int8, "ROW_BLOCK", 16)  # the prefill rows below span blocks
    out = int8_layout.time_layers([(24, 40), (40, 24)], {"stage3": 12, "prefill": 50},
                                  repeats=1, min_s=0.0)
    assert set(out) == {"stage3_fwd", "stage3_fwd_bwd", "prefill_fwd"}
    for case in out.values():
        assert case["equal"] is True
        assert min(case["seconds"].values()) > 0
        assert case["speedup"] == pytest.approx(case["seconds"]["whole"]
                                                / case["seconds"]["blocked"])
    assert int8.ROW_BLOCK == 16  # switched back to today's blocks


def test_layouts_switch_every_product_of_a_model_in_place(int8_layout, monkeypatch):
    import glta_align.int8 as int8
    import torch
    from glta_align.int8 import quantize_linears_int8
    from glta_align.llm import load_tokenizer, tiny_llm

    monkeypatch.setattr(int8, "ROW_BLOCK", 8)
    tiny = tiny_llm(load_tokenizer(), hidden_size=64, num_layers=2, seed=0)
    model = copy.deepcopy(tiny.causal_lm)
    quantize_linears_int8(model)
    lay = int8_layout.Layouts(model)
    assert len(lay.layers) == 2 * 4  # per layer: q/k/v fused, o, gate/up fused, down
    ids = torch.arange(1, 21).reshape(2, 10)
    with torch.no_grad():
        today = model(input_ids=ids).logits
        lay.use("whole")
        assert int8.ROW_BLOCK > 10**9
        assert all(lay_.w_fwd.is_contiguous() for lay_ in lay.layers)
        whole = model(input_ids=ids).logits
        lay.use("blocked")
        assert int8.ROW_BLOCK == 8
        assert not any(lay_.w_fwd.is_contiguous() for lay_ in lay.layers)
    assert torch.equal(today, whole)  # integer products: the layout changes no value
