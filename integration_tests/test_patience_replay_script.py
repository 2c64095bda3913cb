"""benchmarks/align/patience_replay.py: stage 3's patience replayed on recorded valid curves."""

from __future__ import annotations

import json

import pytest


def test_replay_stops_after_patience_and_keeps_the_first_best(align_script):
    replay = align_script("patience_replay").replay
    curve = [0.20, 0.22, 0.21, 0.23, 0.19, 0.18]
    assert replay(curve, 1) == {"kept": 1, "valid": 0.22, "epochs_run": 3}
    assert replay(curve, 2) == {"kept": 3, "valid": 0.23, "epochs_run": 6}
    assert replay(curve, 5) == {"kept": 3, "valid": 0.23, "epochs_run": 6}
    # a tie is not a new best (the stage needs a strictly higher value)
    assert replay([0.3, 0.3, 0.4], 1) == {"kept": 0, "valid": 0.3, "epochs_run": 2}
    with pytest.raises(ValueError, match="patience"):
        replay(curve, 0)
    with pytest.raises(ValueError, match="empty"):
        replay([], 1)


def test_summary_counts_epochs_and_the_valid_cost_per_patience(align_script, tmp_path):
    script = align_script("patience_replay")

    def run(row, seed, curve):
        return {"dataset": "ml-100k", "row": row, "seed": seed,
                "result": {"stage3": {"valid_ndcg@10": curve, "stopped_early": True}}}

    doc = {"runs": [run("full", 0, [0.2, 0.1, 0.3]), run("full", 1, [0.2, 0.25, 0.24, 0.23]),
                    {"dataset": "ml-100k", "row": "lightgcn", "seed": 0, "result": {}}]}
    src = tmp_path / "ablation.json"
    src.write_text(json.dumps(doc))
    out = tmp_path / "replay.json"
    assert script.main([str(src), "--patience", "2,1", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert len(res["runs"]) == 2  # the run without a stage-3 curve is left out
    one, two = res["summary"]["1"], res["summary"]["2"]
    assert one["epochs_run"] == 2 + 3 and two["epochs_run"] == 3 + 4
    assert one["kept_same_as_patience_2"] == 1 and two["kept_same_as_patience_2"] == 2
    assert one["valid_mean_diff_to_patience_2"] == pytest.approx((0.2 - 0.3) / 2)
    assert two["valid_mean_diff_to_patience_2"] == 0.0
    assert res["commit"] and "patience_replay.py" in res["command"]


def test_rows_filter_keeps_only_the_named_rows(align_script, tmp_path):
    script = align_script("patience_replay")

    def run(row, seed):
        return {"dataset": "ml-100k", "row": row, "seed": seed,
                "result": {"stage3": {"valid_ndcg@10": [0.2, 0.1, 0.3]}}}

    src = tmp_path / "ablation.json"
    src.write_text(json.dumps({"runs": [run("full", 0), run("no-text", 0), run("no-text", 1)]}))
    out = tmp_path / "replay.json"
    script.main([str(src), "--rows", "no-text", "--out", str(out)])
    res = json.loads(out.read_text())
    assert [(r["row"], r["seed"]) for r in res["runs"]] == [("no-text", 0), ("no-text", 1)]
    assert res["summary"]["1"]["runs"] == 2


@pytest.mark.parametrize("curve", [[0.20, 0.22, 0.21, 0.23, 0.19, 0.18],
                                   [0.3, 0.3, 0.4, 0.1, 0.1, 0.1],
                                   [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]])
@pytest.mark.parametrize("patience", [1, 2, 3])
def test_replay_agrees_with_the_stage_loop(align_script, tmp_path, curve, patience):
    """The replay's rule is the training loop's: the same kept epoch and epochs trained as
    ``glta_align._common.run_loop`` fed the curve as its validation scores."""
    from dataclasses import asdict, dataclass

    import torch
    from glta_align._common import run_loop

    @dataclass
    class Cfg:
        epochs: int = len(curve)
        save_every: int = 1
        seed: int = 0

        def to_dict(self):
            return asdict(self)

    model = torch.nn.Linear(2, 1)
    res = run_loop(stage="t", run_dir=tmp_path, fingerprint="fp", config=Cfg(),
                   modules={"m": model}, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                   make_batches=lambda e: [[0]], loss_fn=lambda b: model(torch.ones(1, 2)).sum(),
                   progress=None, resume=False, patience=patience,
                   validate=lambda epoch: {"ndcg@10": curve[epoch]})
    got = align_script("patience_replay").replay(curve, patience)
    assert got["kept"] == res.best_epoch
    assert got["epochs_run"] == len(res.epoch_losses)
    assert got["valid"] == res.best_metrics["ndcg@10"]
