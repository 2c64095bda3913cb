"""benchmarks/align/int8_cast.py and int8_mlp_fidelity.py: what they time and compare."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture
def cast(align_script):
    return align_script("int8_cast")


@pytest.fixture
def fidelity(align_script):
    return align_script("int8_mlp_fidelity")


def test_both_graphs_round_the_same_values(cast):
    from glta_align.int8 import int8_kernels

    if not int8_kernels()[1]:
        pytest.skip("the int8 graph is not compiled here (no C++ compiler)")
    check = cast.check_outputs(rows=8)
    assert check == {"max_abs": 0.0, "dtype": "torch.bfloat16"}


def test_main_times_every_variant_in_both_passes(cast, tmp_path):
    from glta_align.int8 import int8_kernels

    if not int8_kernels()[1]:
        pytest.skip("the int8 graph is not compiled here (no C++ compiler)")
    out = tmp_path / "r.json"
    assert cast.main(["--rows", "8,16", "--repeats", "2", "--min-sample-s", "0.001",
                      "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [(r["pass"], r["rows"]) for r in doc["results"]] == [
        ("forward", 8), ("forward", 16), ("backward", 8), ("backward", 16)]
    for r in doc["results"]:
        assert set(r["median_ms"]) == {"int_mm", "cast_after", "cast_inside", "bf16_linear"}
        assert all(v > 0 for v in r["median_ms"].values()) and r["cast_after_over_inside"] > 0
    assert doc["check"]["max_abs"] == 0.0 and doc["malloc"] != "system"


def test_compare_measures_distance_and_argmax_agreement(fidelity):
    gen = torch.Generator().manual_seed(0)
    ref = [torch.randn(5, 11, generator=gen), torch.randn(3, 11, generator=gen)]
    assert fidelity.compare(ref, [r.clone() for r in ref]) == {"rel_l2": 0.0,
                                                              "top1_agreement": 1.0}
    flipped = [-r for r in ref]  # every arg-max moves, the error is twice the norm
    got = fidelity.compare(ref, flipped)
    assert got["rel_l2"] == pytest.approx(2.0) and got["top1_agreement"] == 0.0


def test_layers_variant_is_the_layer_by_layer_mlp(fidelity):
    from glta_align import int8
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(16, 24, bias=False)
            self.up_proj = nn.Linear(16, 24, bias=False)
            self.down_proj, self.act_fn = nn.Linear(24, 16, bias=False), nn.SiLU()

    torch.manual_seed(0)
    block = nn.Sequential(MLP()).requires_grad_(False)
    int8.quantize_linears_int8(block)
    mlp = block[0]
    assert isinstance(mlp, int8.Int8GatedMLP)
    x = torch.randn(4, 16)
    with torch.no_grad():
        want = mlp.down_proj(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))
        torch.testing.assert_close(fidelity._layers(mlp, x), want, rtol=0, atol=0)


@pytest.fixture
def isa(align_script):
    return align_script("isa_products")


def test_isa_products_times_all_three_the_probes_way(isa, monkeypatch):
    from glta_align import llm as llm_mod

    calls = []
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda shapes, p, rows, n: calls.append((p, rows, n)) or
                        {"float32": 90.0, "bfloat16": 2.0, "int8": 150.0}[p] + len(calls))
    rates = isa.measure(isa.SMOLLM2_135M, rows=16, repeats=2)
    # interleaved, one window each per round, each keeping its best
    assert [c[0] for c in calls] == ["float32", "bfloat16", "int8"] * 2
    assert all(c[1:] == (16, 1) for c in calls)
    assert rates == {"float32": 94.0, "bfloat16": 7.0, "int8": 156.0}


def test_isa_products_main_records_the_limits_and_the_rules(isa, tmp_path, monkeypatch):
    from glta_align import llm as llm_mod

    for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(name, raising=False)
    # read by isa_limits; torch read the variable at start-up, so the capability is faked
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX2")
    monkeypatch.setattr(isa, "measure", lambda config, rows, repeats:
                        {"float32": 90.0, "bfloat16": 2.0, "int8": 150.0})
    out = tmp_path / "r.json"
    assert isa.main(["--rows", "8", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["isa_limits"] == {"ATEN_CPU_CAPABILITY": "avx2"}
    assert doc["aten_capability"] == "AVX2" and doc["int8_activations"] == "float32"
    assert not any(doc["flags_as_glta_reads_them"].values())
    assert doc["ratio_to_float32"] == {"float32": 1.0, "bfloat16": 0.02, "int8": 1.67}


def test_isa_products_real_shapes_time_positive_rates(isa):
    tiny = isa.SimpleNamespace(hidden_size=32, num_attention_heads=4, num_key_value_heads=2,
                               intermediate_size=64)
    rates = isa.measure(tiny, rows=4, repeats=1, precisions=("float32", "int8"))
    assert set(rates) == {"float32", "int8"} and all(v > 0 for v in rates.values())
