"""GLTA's prediction mode chosen on valid (``[eval] ranking = "select"``)."""

from types import SimpleNamespace

import torch
from glta_graph.data import Interactions, random_interactions

from glta_cli.evaluation import SELECT_RANKINGS, breakdown_markdown, select_ranking


def _data() -> Interactions:
    return random_interactions(12, 20, lengths=(6, 7), split_p=(0.5, 0.3, 0.2), anchor=True)


class _Rec:
    """Ranks each user's valid items first in ``good`` mode, the worst items otherwise."""

    def __init__(self, data, good, trained="first_k"):
        self.data, self.good, self.calls = data, good, []
        self.config = SimpleNamespace(ranking=trained, select_metric="ndcg@10")

    def recommend(self, users, k, *, exclude=None, ranking=None, progress=None):
        self.calls.append(ranking)
        rows = []
        for u in users:
            valid = self.data.user_items("valid", int(u)).tolist()
            seen = set(self.data.user_items("train", int(u)).tolist()) | set(valid)
            rest = [i for i in range(self.data.num_items) if i not in seen]
            rows.append((valid + rest)[:k] if ranking == self.good else rest[:k])
        return torch.zeros(len(rows), k), torch.tensor(rows)


def test_select_picks_the_better_mode_on_valid():
    data = _data()
    rec = _Rec(data, good="mean")
    mode, valid, record = select_ranking(None, data, (5, 10), rec, None)
    assert mode == "mean" and record["chosen"] == "mean" and record["metric"] == "ndcg@10"
    assert valid["ndcg@10"] == record["valid"]["mean"] == 1.0
    assert record["valid"]["first_k"] == 0.0
    assert rec.calls == list(SELECT_RANKINGS)
    line = breakdown_markdown({"models": {}, "glta_ranking": record})
    assert "chosen on valid ndcg@10: `mean`" in line and "first_k 0.0000" in line


def test_select_reuses_stage3_figures_for_the_trained_mode():
    data = _data()
    rec = _Rec(data, good="first_k")
    stage3 = {"ndcg@10": 0.9, "precision@10": 0.2, "ndcg@5": 0.8}
    mode, valid, record = select_ranking(None, data, (5, 10), rec, stage3)
    assert rec.calls == ["mean"]  # first_k's valid figures came from stage 3
    assert mode == "first_k" and valid == stage3 and record["valid"]["mean"] == 0.0
    # a tie keeps the trained mode
    rec = _Rec(data, good=None, trained="mean")
    mode, _, record = select_ranking(None, data, (5, 10), rec, None)
    assert mode == "mean" and record["valid"] == {"mean": 0.0, "first_k": 0.0}


def test_breakdown_markdown_prints_the_stages_speed():
    selection = {"best_epoch": 1, "epochs_run": 3, "valid_metrics": {"ndcg@10": 0.1},
                 "achieved_gflops": 300.0, "llm_precision": "float32",
                 "llm_precision_probe": {"gflops": {"float32": 600.0}}}
    text = breakdown_markdown({"models": {}}, selection, stage2={"achieved_gflops": 250.0})
    lines = [line for line in text.splitlines() if line]
    assert lines[0].startswith("Stage 3 kept epoch 2 of 3 run")
    assert lines[1] == "Stage 2 trained at 250 GFLOP/s (model FLOPs / training time)."
    assert lines[2] == ("Stage 3 trained at 300 GFLOP/s (model FLOPs / training time), 50% of "
                        "the float32 GEMM rate the precision probe measured (600 GFLOP/s).")
    assert "trained at" not in breakdown_markdown({"models": {}}, {"best_epoch": 0})
