"""benchmarks/align/profile_stage3.py: torch.profiler operators grouped by kind."""

from __future__ import annotations

import pytest


@pytest.fixture
def prof(align_script):
    return align_script("profile_stage3")


@pytest.mark.parametrize(("name", "kind"), [
    ("aten::mm", "linear products"),
    ("aten::addmm", "linear products"),
    ("aten::_int_mm", "linear products"),
    ("aten::bmm", "attention products"),
    ("aten::_softmax_backward_data", "attention kernels and softmax"),
    ("aten::_scaled_dot_product_flash_attention_for_cpu", "attention kernels and softmax"),
    ("aten::copy_", "casts and copies"),
    ("aten::_to_copy", "casts and copies"),
    ("aten::mul", "element-wise"),
    ("aten::add_", "element-wise"),
    ("aten::addcdiv_", "element-wise"),
    ("aten::_foreach_add_", "element-wise"),
    ("aten::silu_backward", "element-wise"),
    # near-misses of the names above are not taken for them
    ("aten::matmul", "framework"),
    ("aten::expand", "framework"),
    ("aten::empty_strided", "framework"),
    ("MulBackward0", "framework"),
    # inductor's compiled kernels (glta_align.pointwise), not their autograd wrappers
    ("## Call CompiledFxGraph f73ox2674ooo7lhohvn7o5m7nwoznaewus4t", "compiled element-wise"),
    ("cpp_fused_add_mul_0", "compiled element-wise"),
    ("CompiledFunction", "framework"),
    ("CompiledFunctionBackward", "framework"),
    ("autograd::engine::evaluate_function: MmBackward0", "framework"),
])
def test_kind_of(prof, name, kind):
    assert prof.kind_of(name) == kind


def test_breakdown_shares_sum_to_one_and_rank_the_top(prof):
    events = [("aten::mm", 3.0, 10), ("aten::mul", 1.0, 50), ("aten::bmm", 0.5, 5),
              ("aten::view", 0.5, 100)]
    out = prof.breakdown(events, top=2)
    assert out["total_self_s"] == pytest.approx(5.0)
    shares = {k: v["share"] for k, v in out["kinds"].items()}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["linear products"] == pytest.approx(0.6)
    assert shares["element-wise"] == pytest.approx(0.2)
    assert shares["framework"] == pytest.approx(0.1)
    assert shares["casts and copies"] == 0.0
    assert [t["name"] for t in out["top"]] == ["aten::mm", "aten::mul"]
    assert out["top"][1] == {"name": "aten::mul", "kind": "element-wise", "self_s": 1.0,
                             "share": pytest.approx(0.2), "calls": 50}
    empty = prof.breakdown([])
    assert empty["total_self_s"] == 0 and empty["top"] == []


def test_rejects_a_folder_that_is_not_a_run(prof, tmp_path, capsys):
    assert prof.main([str(tmp_path)]) == 2
    assert str(tmp_path) in capsys.readouterr().err


def test_shapes_need_the_profiler(prof, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        prof.main([str(tmp_path), "--shapes", "--no-profiler"])
    assert exc.value.code == 2 and "--shapes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        prof.main([str(tmp_path), "--probe-rows", "256,0"])
    assert exc.value.code == 2 and "--probe-rows" in capsys.readouterr().err


def test_profiled_config_one_epoch_and_batch_size(prof):
    from glta_align import UserItemConfig

    run = UserItemConfig(epochs=12, patience=1, batch_size=8, lr=1e-4)
    same = prof.profiled_config(run, 96)
    assert (same.epochs, same.patience, same.max_users, same.batch_size) == (1, None, 96, 8)
    assert same.lr == run.lr
    wider = prof.profiled_config(run, 256, batch_size=32)
    assert (wider.max_users, wider.batch_size) == (256, 32)
    with pytest.raises(ValueError, match="batch_size"):
        prof.profiled_config(run, 96, batch_size=0)


def test_rows_list_parses_the_probe_rows(prof):
    assert prof.rows_list("256") == [256]
    assert prof.rows_list("256,864") == [256, 864]
    with pytest.raises(ValueError, match="'x'"):
        prof.rows_list("256,x")
    with pytest.raises(ValueError, match=">= 1"):
        prof.rows_list("0")
