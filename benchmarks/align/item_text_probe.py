"""Does the LLM know these items? Its reading of the item descriptions as a recommender.

For a finished ``glta pipeline`` run (its prepared dataset and LightGCN), this script reads
every item's description with the frozen LLM (``glta_align.user_item.item_text_features``:
the mean last hidden state over the description, what ``[user_item] item_text_features``
puts in the residual head; also the middle decoder layer's output, often the better reading
of a decoder-only model), once with the pretrained weights and once with a randomly
initialised model of the same shape (the control), and also takes the mean of the
pretrained model's input token embeddings (no context) and TF-IDF over the description's
tokens (the words alone, no model). Each feature set
becomes a content-based recommender: a user's profile is the mean of their train items'
L2-normalised features, an item's score its cosine with that profile. Ranked alone, and
fused with the run's LightGCN scores (each user's row standardised, weight on the grid of
``fusion.py`` chosen on valid N@10), on the valid split; the test split is read once, at the
valid choice. Features are used whole (H) and as the 64 principal components the head keeps.
Popularity (train interactions) is ranked beside them as the floor any recommender should pass.

If the pretrained reading ranks no better than the random one, the LLM's knowledge of the
items cannot help GLTA through its text channel either.

    uv run python benchmarks/align/item_text_probe.py RUN [RUN ...] --json OUT.json

An existing ``OUT.json`` is added to (a run analysed again replaces its entry).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from glta_graph import load_graph_embeddings
from glta_graph.evaluate import select_rows

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion import GRID, eval_splits, fuse_eval, standardise  # this folder's helpers
from profile_gen import cpu_model, git_commit

DESCRIPTION_TOKENS = 24  # the stage configs' default budget per description


def content_scores(features: torch.Tensor, train: torch.Tensor, users: np.ndarray
                   ) -> torch.Tensor:
    """Cosine of each user's profile with every item: ``features`` (I, F), ``train`` the
    (U_all x I) CSR train matrix, ``users`` (U,) -> (U, I) float32. A profile is the mean of
    the user's train items' L2-normalised features (a user without train items scores 0)."""
    f = torch.nn.functional.normalize(features.float(), dim=1)
    rows = select_rows(train, torch.as_tensor(users)).to_dense().float()
    profile = torch.nn.functional.normalize(rows @ f, dim=1)
    return profile @ f.T


def read_items(data, init: str, dtype: str) -> dict[str, torch.Tensor]:
    """The LLM's reading of each of ``data``'s item descriptions (the prepared dataset) with
    pretrained or random weights: ``{"hidden": (I, H), "layerN": (I, H)}`` (the last hidden
    state and the middle layer's output, token means), for pretrained also ``"embedding"``
    (I, H) (mean input embedding) and ``"tfidf"`` (I, V'), and ``"precision"`` (a str)."""
    from glta_align.llm import load_llm
    from glta_align.prompts import tokenize_texts
    from glta_align.user_item import item_text_features

    llm = load_llm(None, dtype=dtype, init=init, init_seed=0)
    out = {"hidden": item_text_features(llm, data.item_text, DESCRIPTION_TOKENS)}
    middle = llm.causal_lm.config.num_hidden_layers // 2
    out[f"layer{middle}"] = item_text_features(llm, data.item_text, DESCRIPTION_TOKENS,
                                                layer=middle)
    if init == "pretrained":
        table = llm.causal_lm.get_input_embeddings().weight.detach().float()
        ids = tokenize_texts(llm.tokenizer, list(data.item_text), DESCRIPTION_TOKENS)
        eos = llm.tokenizer.eos_token_id or 0
        out["embedding"] = torch.stack([table[torch.as_tensor(t or [eos])].mean(0) for t in ids])
        out["tfidf"] = tfidf(ids)
    out["precision"] = llm.precision
    return out


def tfidf(ids: list[list[int]]) -> torch.Tensor:
    """TF-IDF rows (I, V') over the token ids that occur (V' of them), from one id list
    per item; an item without tokens gets a zero row."""
    vocab = {t: j for j, t in enumerate(sorted({t for row in ids for t in row}))}
    tf = torch.zeros(len(ids), max(len(vocab), 1))
    for i, row in enumerate(ids):
        for t in row:
            tf[i, vocab[t]] += 1
    df = (tf > 0).sum(0).clamp_min(1).float()
    return tf * torch.log(len(ids) / df)


def analyse(run: Path, dtype: str = "auto", components: int = 64) -> dict:
    """Every feature set's ranking alone and fused with LightGCN, chosen on valid."""
    from glta_align.heads import reduce_item_features
    from glta_graph.data import Interactions

    t0 = time.perf_counter()
    data = Interactions.load(run / "dataset")
    ue, ie = load_graph_embeddings(run, data.fingerprint)
    feats: dict[str, torch.Tensor] = {}
    precision = {}
    for init in ("pretrained", "random"):
        got = read_items(data, init, dtype)
        precision[init] = got.pop("precision")
        for kind, f in got.items():
            name = kind if kind == "tfidf" else f"{init}-{kind}"
            feats[name] = f
            feats[f"{name}-pca{components}"] = reduce_item_features(f, components, ie.float())
    splits = eval_splits(data)
    graph = {s: standardise(ue.float()[torch.as_tensor(u)] @ ie.float().T)
             for s, (u, _, _) in splits.items()}
    results: dict = {}
    counts = torch.as_tensor(np.bincount(data.train.col_indices().numpy(),
                                         minlength=data.num_items), dtype=torch.float32)
    for name, f in [("popularity", None), *feats.items()]:
        text = {s: standardise(counts[None].expand(len(u), -1) if f is None
                               else content_scores(f, data.train, u))
                for s, (u, _, _) in splits.items()}
        _, ex, rel = splits["valid"]
        grid = {str(w): fuse_eval(text["valid"], graph["valid"], w, ex, rel)["ndcg@10"]
                for w in GRID}
        best_w = max((float(w) for w in grid), key=lambda w: (grid[str(w)], -w))
        entry = {"valid_ndcg10_grid": grid, "chosen_w": best_w}
        for split in ("valid", "test"):
            _, ex, rel = splits[split]
            entry[split] = {
                "text_alone": fuse_eval(text[split], graph[split], 0.0, ex, rel),
                "fused": fuse_eval(text[split], graph[split], best_w, ex, rel),
                "lightgcn_alone": fuse_eval(text[split], graph[split], 1.0, ex, rel)}
        results[name] = entry
    return {"run": str(run), "precision": precision, "components": components,
            "description_tokens": DESCRIPTION_TOKENS, "features": results,
            "seconds": time.perf_counter() - t0}


def _mean(entries: list[dict], split: str, what: str, minus: str | None = None) -> float:
    """Mean N@10 of ``what`` (minus ``minus``) over the runs' entries of one feature set."""
    vals = [e[split][what]["ndcg@10"] - (e[split][minus]["ndcg@10"] if minus else 0.0)
            for e in entries]
    return round(sum(vals) / len(vals), 6)


def summarise(doc: dict) -> dict:
    """Means over the file's runs, per feature set: N@10 ranked alone (valid, test) and the
    fused ranking minus LightGCN's (valid, test), with how many runs chose a weight below 1."""
    runs = doc["runs"]
    out = {"runs": len(runs)}
    for name in runs[0]["features"] if runs else []:
        entries = [r["features"][name] for r in runs if name in r["features"]]
        out[name] = {"valid_alone": _mean(entries, "valid", "text_alone"),
                     "test_alone": _mean(entries, "test", "text_alone"),
                     "valid_fused_minus_lightgcn": _mean(entries, "valid", "fused",
                                                         "lightgcn_alone"),
                     "test_fused_minus_lightgcn": _mean(entries, "test", "fused",
                                                        "lightgcn_alone"),
                     "fused_below_1": sum(e["chosen_w"] < 1.0 for e in entries)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="finished glta pipeline run folders")
    ap.add_argument("--json", type=Path, required=True, help="results file (written atomically)")
    ap.add_argument("--dtype", default="auto", help="LLM precision (as [llm] dtype)")
    ap.add_argument("--components", type=int, default=64,
                    help="principal components (as [user_item] item_text_dim)")
    args = ap.parse_args(argv)
    for run in args.runs:
        if not (run / "dataset").is_dir():
            ap.error(f"{run}: no dataset/ folder (not a glta pipeline run)")
    doc = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": []}
    for run in args.runs:
        entry = analyse(run, args.dtype, args.components)
        entry.update({"command": " ".join(sys.argv if argv is None else ["item_text_probe.py",
                                                                           *argv]),
                      "commit": git_commit(), "cpu": cpu_model(), "threads":
                      torch.get_num_threads(), "date": dt.date.today().isoformat(),
                      "load_average": os.getloadavg()[0]})
        doc["runs"] = [r for r in doc["runs"] if r["run"] != entry["run"]] + [entry]
        doc["summary_ndcg10"] = summarise(doc)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(args.json)
        for name, e in entry["features"].items():
            print(f"{run} {name}: valid N@10 alone {e['valid']['text_alone']['ndcg@10']:.4f}, "
                  f"fused (w {e['chosen_w']}) {e['valid']['fused']['ndcg@10']:.4f} vs LightGCN "
                  f"{e['valid']['lightgcn_alone']['ndcg@10']:.4f}; test fused "
                  f"{e['test']['fused']['ndcg@10']:.4f} vs "
                  f"{e['test']['lightgcn_alone']['ndcg@10']:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
