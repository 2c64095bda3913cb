"""benchmarks/align/residual_scale.py: a residual-head run ranked with its LLM correction
scaled, the scale chosen on valid."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner


@pytest.fixture
def rs(align_script):
    return align_script("residual_scale")


def _run(root, tiny_model_dir, *extra):
    from glta_cli.app import app
    from glta_cli.testing import tiny_pipeline_args, write_ratings_csv

    csv_path = write_ratings_csv(root / "ratings.csv")
    run = root / "run"
    result = CliRunner().invoke(app, ["pipeline", *tiny_pipeline_args(csv_path, tiny_model_dir,
                                                                      run), *extra])
    assert result.exit_code == 0, result.output
    return run


@pytest.fixture(scope="module")
def residual_run(tmp_path_factory, tiny_model_dir):
    return _run(tmp_path_factory.mktemp("rs"), tiny_model_dir, "--user_item.residual", "true",
                "--user_item.epochs", "2")


def test_choose_prefers_the_best_then_nearest_one_then_smaller(rs):
    assert rs.choose({0.0: 0.1, 1.0: 0.3, 2.0: 0.2}) == 1.0
    assert rs.choose({0.0: 0.4, 1.0: 0.3, 2.0: 0.2}) == 0.0
    assert rs.choose({0.0: 0.3, 0.5: 0.3, 1.5: 0.3, 3.0: 0.1}) == 0.5  # 0.5 and 1.5 tie: smaller
    assert rs.choose({0.0: 0.3, 1.0: 0.3}) == 1.0


def test_held_out_gain_scores_the_choice_on_the_other_half(rs):
    n, items = 40, 30
    relevant = torch.sparse_coo_tensor(
        torch.stack([torch.arange(n), torch.arange(n) % items]), torch.ones(n),
        (n, items)).to_sparse_csr()
    good = torch.stack([(torch.arange(10) + u) % items for u in range(n)])  # hit at rank 1
    bad = (good + 15) % items  # never a hit
    out = rs.held_out_gain({0.0: good, 1.0: bad, 2.0: bad}, relevant, repeats=3)
    assert out["repeats"] == 3 and len(out["per_repeat"]) == 3
    assert out["chosen_minus_scale_1"] == pytest.approx(1.0)  # scale 0 chosen, NDCG 1 vs 0
    assert out["chosen_minus_scale_0"] == 0
    same = rs.held_out_gain({0.0: bad, 1.0: good}, relevant, repeats=2)
    assert same["chosen_minus_scale_1"] == 0 and same["chosen_minus_scale_0"] == pytest.approx(1)


def test_scale_zero_is_lightgcn_one_is_the_run_and_nothing_is_written(rs, residual_run,
                                                                      tmp_path):
    files = {p: p.read_bytes() for p in residual_run.rglob("*") if p.is_file()}
    out = tmp_path / "rs.json"
    assert rs.main([str(residual_run), "--json", str(out), "--scales", "0,1,2"]) == 0
    (entry,) = json.loads(out.read_text())["runs"]
    assert entry["run"] == str(residual_run) and entry["machine"]["cpu"] and entry["commit"]
    assert set(entry["valid"]) == {"0.0", "1.0", "2.0"}
    recorded = json.loads((residual_run / "metrics.json").read_text())
    for split in ("valid", "test"):  # fp32: the same rankings to the last digit
        assert entry[split]["1.0"]["ndcg@10"] == \
            pytest.approx(recorded["glta"][split]["ndcg@10"], abs=1e-6)
        assert entry["lightgcn"][split]["ndcg@10"] == pytest.approx(
            recorded["lightgcn"][split]["ndcg@10"], abs=1e-6)
    # scale 0 drops the LLM's correction: LightGCN's ranking exactly
    assert entry["valid"]["0.0"] == entry["lightgcn"]["valid"]
    chosen = entry["chosen"]
    assert entry["valid"][str(chosen)]["ndcg@10"] == max(
        m["ndcg@10"] for m in entry["valid"].values())
    assert set(entry["test"]) == {"1.0", str(chosen)}  # test read for two configurations only
    held = entry["valid_held_out"]
    assert held["repeats"] == len(held["per_repeat"]) == 20
    assert held["chosen_minus_scale_1"] == pytest.approx(
        sum(r["minus_scale_1"] for r in held["per_repeat"]) / 20, abs=1e-6)
    summary = json.loads(out.read_text())["summary"]["run"]
    assert summary["runs"] == 1 and summary["chosen"] == [chosen]
    assert summary["test_ndcg@10"]["chosen"] == pytest.approx(
        entry["test"][str(chosen)]["ndcg@10"], abs=1e-6)
    lead = summary["chosen_minus_scale_1_test"]
    assert lead["mean"] == pytest.approx(entry["test"][str(chosen)]["ndcg@10"]
                                         - entry["test"]["1.0"]["ndcg@10"], abs=1e-5)
    assert lead["spread"] == 0 and lead["ahead"] + lead["behind"] <= 1  # one run
    assert {p: p.read_bytes() for p in residual_run.rglob("*") if p.is_file()} == files
    # analysed again: its entry is replaced, not added
    assert rs.main([str(residual_run), "--json", str(out), "--scales", "1,0.5"]) == 0
    (again,) = json.loads(out.read_text())["runs"]
    assert set(again["valid"]) == {"1.0", "0.5"}


def test_scaled_correction_restores_the_head_bit_for_bit(rs, residual_run):
    from glta_align.heads import load_head
    from glta_graph.data import Interactions

    data = Interactions.load(residual_run / "dataset")
    head = load_head(residual_run / "gllm_head", expected_fingerprint=data.fingerprint,
                     hidden_size=64, num_items=data.num_items)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    x = torch.randn(3, 64 + head.graph_dim)
    full = head(x)
    with rs.scaled_correction(head, 0.0):
        graph_only = head(x)
    with rs.scaled_correction(head, 0.5):
        half = head(x)
    assert all(torch.equal(before[k], v) for k, v in head.state_dict().items())
    assert torch.equal(head(x), full)
    # the logits are linear in the scale: half way between LightGCN's and the run's
    assert torch.allclose(half, (graph_only + full) / 2, atol=1e-5)
    e = x[:, 64:]
    assert torch.allclose(graph_only, head.alpha.detach() * e @ head.base.item_embeddings.T,
                          atol=1e-5)


def test_a_run_without_the_residual_head_and_bad_scales_are_refused(rs, tmp_path,
                                                                   tiny_model_dir):
    run = _run(tmp_path, tiny_model_dir, "--user_item.residual", "false")
    with pytest.raises(ValueError, match="not a ResidualHead"):
        rs.scale_run(run, (0.0, 1.0))
    out = tmp_path / "rs.json"
    for bad in ("0,0.5", "1,-1", "1,x"):
        with pytest.raises(SystemExit) as err:
            rs.main([str(run), "--json", str(out), "--scales", bad])
        assert err.value.code == 2
    assert rs.main([str(tmp_path / "nothing"), "--json", str(out)]) == 2
    assert not out.exists()
