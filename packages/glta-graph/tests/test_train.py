import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from glta_gllm.checkpoint import CheckpointError, FingerprintMismatchError, read_metadata

from glta_graph.data import Interactions, csr_from_pairs
from glta_graph.train import (
    LightGCNConfig,
    NegativeSampler,
    load_graph_embeddings,
    train_lightgcn,
)


def clustered_dataset(users=80, items=60, clusters=4, per_user=10, seed=0) -> Interactions:
    """Users and items in clusters; each user interacts mostly inside its own cluster."""
    rng = np.random.default_rng(seed)
    u_cl = np.arange(users) % clusters
    i_cl = np.arange(items) % clusters
    split = {"train": ([], []), "valid": ([], []), "test": ([], [])}
    for u in range(users):
        own = np.flatnonzero(i_cl == u_cl[u])
        other = np.flatnonzero(i_cl != u_cl[u])
        chosen = np.concatenate([rng.choice(own, per_user - 1, replace=False),
                                 rng.choice(other, 1)])
        rng.shuffle(chosen)
        for name, part in (("train", chosen[:6]), ("valid", chosen[6:8]), ("test", chosen[8:])):
            split[name][0].extend([u] * len(part))
            split[name][1].extend(part.tolist())
    mats = {k: csr_from_pairs(v[0], v[1], users, items) for k, v in split.items()}
    return Interactions([f"u{i}" for i in range(users)], [f"i{i}" for i in range(items)],
                        name="clusters", **mats)


FAST = dict(dim=16, layers=2, batch_size=64, lr=0.01, eval_every=0, seed=3, ks=(5, 10, 20),
            num_threads=1)


def test_config_defaults_and_checks():
    cfg = LightGCNConfig()
    assert (cfg.dim, cfg.layers, cfg.lr, cfg.batch_size, cfg.l2) == (64, 3, 1e-3, 2048, 1e-4)
    assert cfg.select_metric == "recall@20"
    assert LightGCNConfig.from_dict({**cfg.to_dict(), "num_users": 3}) == cfg
    for bad, match in [({"dim": 0}, "dim"), ({"lr": -1.0}, "lr"), ({"l2": float("nan")}, "l2"),
                       ({"select_metric": "recall@50"}, "select_metric"),
                       ({"select_metric": "auc@20"}, "select_metric"),
                       ({"backend": "dense"}, "backend"), ({"num_threads": 0}, "num_threads"),
                       ({"epochs": 1.5}, "epochs"), ({"device": "nonsense"}, "device")]:
        with pytest.raises(ValueError, match=match):
            LightGCNConfig(**bad)


def test_sampler_never_returns_a_training_positive():
    data = clustered_dataset(users=50, items=40, per_user=10)
    dense = data.train.to_dense().bool()
    sampler = NegativeSampler(data.train)
    gen = torch.Generator().manual_seed(0)
    users = sampler.users.repeat(40)  # many draws per (user, positive)
    for _ in range(5):
        neg = sampler.sample(users, generator=gen)
        assert neg.dtype == torch.int64 and neg.min() >= 0 and neg.max() < data.num_items
        assert not dense[users, neg].any()
    # is_positive agrees with the dense matrix on every cell
    uu, ii = torch.meshgrid(torch.arange(50), torch.arange(40), indexing="ij")
    assert torch.equal(sampler.is_positive(uu.flatten(), ii.flatten()).view(50, 40), dense)


def test_sampler_with_a_single_free_item_and_full_user_rejected():
    # user 0 has every item but one: the only legal negative is item 2
    train = csr_from_pairs([0, 0, 0, 1], [0, 1, 3, 0], 2, 4)
    neg = NegativeSampler(train).sample(torch.zeros(500, dtype=torch.int64),
                                        torch.Generator().manual_seed(1))
    assert torch.all(neg == 2)
    with pytest.raises(ValueError, match="user index 0 interacted with all 2 items"):
        NegativeSampler(csr_from_pairs([0, 0], [0, 1], 1, 2))


def test_training_writes_artifact_and_is_repeatable(tmp_path):
    data = clustered_dataset()
    cfg = LightGCNConfig(epochs=3, **FAST)
    events = []
    r1 = train_lightgcn(data, cfg, tmp_path / "a", progress=events.append)
    r2 = train_lightgcn(data, cfg, tmp_path / "b")
    u1, i1 = load_graph_embeddings(tmp_path / "a", expected_fingerprint=data.fingerprint)
    u2, i2 = load_graph_embeddings(tmp_path / "b")
    assert u1.shape == (80, 16) and i1.shape == (60, 16)
    assert torch.equal(u1, u2) and torch.equal(i1, i2)
    assert [h["loss"] for h in r1.history] == [h["loss"] for h in r2.history]
    assert r1.best_epoch == 2 and len(r1.history) == 3 and r1.seconds > 0
    assert r1.history[-1]["loss"] < r1.history[0]["loss"]
    meta = read_metadata(tmp_path / "a" / "graph")
    assert meta["dataset_fingerprint"] == data.fingerprint
    config = json.loads((tmp_path / "a" / "graph" / "config.json").read_text())
    assert config["num_users"] == 80 and config["num_items"] == 60 and config["dim"] == 16
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("epoch") == 3
    steps = [e for e in events if e.kind == "step"]
    assert len(steps) == 3 * 8 and all("loss" in e.metrics for e in steps)
    assert all(e.stage == "graph" for e in events)
    # another seed gives other embeddings
    train_lightgcn(data, LightGCNConfig(epochs=3, **{**FAST, "seed": 4}), tmp_path / "c")
    assert not torch.equal(load_graph_embeddings(tmp_path / "c")[0], u1)


def test_load_graph_embeddings_errors(tmp_path):
    data = clustered_dataset()
    train_lightgcn(data, LightGCNConfig(epochs=1, **FAST), tmp_path / "run")
    with pytest.raises(FingerprintMismatchError) as err:
        load_graph_embeddings(tmp_path / "run", expected_fingerprint="0123456789abcdef")
    assert data.fingerprint in str(err.value) and "0123456789abcdef" in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_graph_embeddings(tmp_path / "nothing")


def test_training_input_errors(tmp_path):
    data = clustered_dataset()
    with pytest.raises(ValueError, match="K=100 is larger than the catalogue of 60 items"):
        train_lightgcn(data, LightGCNConfig(epochs=1, **{**FAST, "ks": (5, 100)},
                                            select_metric="recall@5"), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            train_lightgcn(data, LightGCNConfig(epochs=1, **{**FAST, "device": "cuda"}), tmp_path)
    empty = Interactions(["a"], ["x", "y"], *(csr_from_pairs([], [], 1, 2) for _ in range(3)))
    with pytest.raises(ValueError, match="train split is empty"):
        train_lightgcn(empty, LightGCNConfig(epochs=1, **{**FAST, "ks": (1,)},
                                             select_metric="recall@1"), tmp_path)


def test_resume_refuses_other_dataset_or_shape(tmp_path):
    data = clustered_dataset()
    train_lightgcn(data, LightGCNConfig(epochs=1, **FAST), tmp_path)
    with pytest.raises(ValueError, match=r"cannot resume LightGCN: dim was 16 and is now 8"):
        train_lightgcn(data, LightGCNConfig(epochs=2, **{**FAST, "dim": 8}), tmp_path)
    other = clustered_dataset(seed=1)
    with pytest.raises(FingerprintMismatchError, match=other.fingerprint):
        train_lightgcn(other, LightGCNConfig(epochs=2, **FAST), tmp_path)
    # resume=False starts over
    res = train_lightgcn(other, LightGCNConfig(epochs=1, **FAST), tmp_path, resume=False)
    assert len(res.history) == 1


def test_more_epochs_continue_from_state(tmp_path):
    data = clustered_dataset()
    train_lightgcn(data, LightGCNConfig(epochs=2, **FAST), tmp_path / "r")
    res = train_lightgcn(data, LightGCNConfig(epochs=4, **FAST), tmp_path / "r")
    straight = train_lightgcn(data, LightGCNConfig(epochs=4, **FAST), tmp_path / "s")
    assert [h["epoch"] for h in res.history] == [0, 1, 2, 3]
    torch.testing.assert_close(load_graph_embeddings(tmp_path / "r")[0],
                               load_graph_embeddings(tmp_path / "s")[0])
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in straight.history])


_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    from glta_graph.data import Interactions, csr_from_pairs
    from glta_graph.train import LightGCNConfig, train_lightgcn

    saved = torch.load(sys.argv[1])
    shape = (len(saved["user_ids"]), len(saved["item_ids"]))
    data = Interactions(saved["user_ids"], saved["item_ids"], name=saved["name"],
                        **{s: csr_from_pairs(*saved[s], *shape) for s in ("train", "valid",
                                                                          "test")})
    cfg = LightGCNConfig(epochs=4, dim=16, layers=2, batch_size=64, lr=0.01, eval_every=0,
                         seed=3, num_threads=1)

    def die_mid_epoch(event):
        # a real SIGKILL in the middle of epoch 2 (epochs 0 and 1 are checkpointed)
        if event.kind == "step" and event.epoch == 2 and event.step % 8 == 3:
            os.kill(os.getpid(), signal.SIGKILL)

    train_lightgcn(data, cfg, sys.argv[2], progress=die_mid_epoch)
    """
)


def test_resume_after_sigkill_finishes_the_run(tmp_path):
    data = clustered_dataset()
    pairs = {s: [torch.from_numpy(a) for a in data.pairs(s)] for s in ("train", "valid", "test")}
    torch.save({"user_ids": data.user_ids, "item_ids": data.item_ids, "name": data.name, **pairs},
               tmp_path / "ds.pt")
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "ds.pt"), str(run)],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert not (run / "graph").exists()
    state = json.loads((run / "state" / "graph" / "state.json").read_text())
    assert state["epoch"] == 1
    cfg = LightGCNConfig(epochs=4, **FAST)
    resumed = train_lightgcn(data, cfg, run)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2, 3]
    train_lightgcn(data, cfg, tmp_path / "straight")
    torch.testing.assert_close(load_graph_embeddings(run)[1],
                               load_graph_embeddings(tmp_path / "straight")[1])


@pytest.mark.parametrize("mode", ["user", "pair"])
def test_positives_are_training_pairs(mode):
    data = clustered_dataset()
    sampler = NegativeSampler(data.train)
    n = sampler.users.numel()
    users, items = sampler.positives(n, mode, torch.Generator().manual_seed(0))
    assert users.shape == items.shape == (n,)
    assert sampler.is_positive(users, items).all()
    if mode == "pair":  # a permutation of all pairs
        keys = torch.sort(users * data.num_items + items).values
        assert torch.equal(keys, sampler.keys)
    else:  # users roughly uniform: every user drawn, none hugely over-represented
        counts = torch.bincount(users, minlength=data.num_users)
        assert counts.min() > 0 and counts.max() < 4 * n / data.num_users
    with pytest.raises(ValueError, match="sampling mode"):
        sampler.positives(3, "items")


def test_training_beats_random_and_selects_on_valid(tmp_path):
    from glta_graph.evaluate import evaluate_embeddings

    data = clustered_dataset()
    cfg = LightGCNConfig(epochs=12, **{**FAST, "eval_every": 2}, patience=3,
                         select_metric="recall@10")
    events = []
    res = train_lightgcn(data, cfg, tmp_path, progress=events.append)
    validated = [h for h in res.history if "valid" in h]
    assert len(validated) >= 2
    best = max(validated, key=lambda h: h["valid"]["recall@10"])
    assert res.best_epoch == best["epoch"] and res.best_valid == best["valid"]
    ue, ie = load_graph_embeddings(tmp_path)
    assert evaluate_embeddings(ue, ie, data, "valid", (10,))["recall@10"] == pytest.approx(
        res.best_valid["recall@10"])
    trained = evaluate_embeddings(ue, ie, data, "test", (10,))["recall@10"]
    g = torch.Generator().manual_seed(0)
    rand = evaluate_embeddings(torch.randn(80, 16, generator=g), torch.randn(60, 16, generator=g),
                               data, "test", (10,))["recall@10"]
    # 9 of each user's 10 items lie in its cluster of 15: random ranking finds ~10/52 of them
    assert trained > 0.5 and trained > 2 * rand
    epoch_events = [e for e in events if e.kind == "epoch"]
    assert any("recall@10" in e.metrics for e in epoch_events)


def test_early_stopping_stops_when_valid_stalls(tmp_path):
    data = clustered_dataset()
    # a negligible lr keeps the embeddings fixed: validation never improves after the first check
    cfg = LightGCNConfig(epochs=20, **{**FAST, "eval_every": 1, "lr": 1e-12}, patience=2)
    res = train_lightgcn(data, cfg, tmp_path)
    assert res.stopped_early and len(res.history) == 3 and res.best_epoch == 0


# RUN/graph/model.safetensors as written by glta-graph 0.1.0 (glta_format "1"): a regression
# fixture that later versions must keep loading.
_GRAPH_V1 = (
    "6AAAAAAAAAB7Il9fbWV0YWRhdGFfXyI6eyJnbHRhX2Zvcm1hdCI6IjEiLCJkYXRhc2V0X2ZpbmdlcnByaW50Ijoi"
    "MDAwMDAwMDBkZWFkYmVlZiIsImZvcm1hdCI6InB0In0sIml0ZW1fZW1iZWRkaW5nIjp7ImR0eXBlIjoiRjMyIiwi"
    "c2hhcGUiOlszLDNdLCJkYXRhX29mZnNldHMiOlswLDM2XX0sInVzZXJfZW1iZWRkaW5nIjp7ImR0eXBlIjoiRjMy"
    "Iiwic2hhcGUiOlsyLDNdLCJkYXRhX29mZnNldHMiOlszNiw2MF19fSAgAAAAgAAAAL4AAIC+AADAvgAAAL8AACC/"
    "AABAvwAAYL8AAIC/AAAAAAAAAD4AAIA+AADAPgAAAD8AACA/"
)


def test_loads_graph_artifact_written_by_version_1(tmp_path):
    import base64

    graph = tmp_path / "graph"
    graph.mkdir()
    (graph / "model.safetensors").write_bytes(base64.b64decode(_GRAPH_V1))
    (graph / "config.json").write_text(
        json.dumps({"dim": 3, "layers": 1, "num_items": 3, "num_users": 2}))
    ue, ie = load_graph_embeddings(tmp_path, expected_fingerprint="00000000deadbeef")
    assert torch.equal(ue, torch.arange(6, dtype=torch.float32).view(2, 3) / 8)
    assert torch.equal(ie, -torch.arange(9, dtype=torch.float32).view(3, 3) / 8)
    with pytest.raises(FingerprintMismatchError, match="00000000deadbeef"):
        load_graph_embeddings(tmp_path, expected_fingerprint="ffffffffffffffff")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_training_on_cuda_with_validation(tmp_path):
    data = clustered_dataset()
    cfg = LightGCNConfig(epochs=4, **{**FAST, "eval_every": 2, "device": "cuda"})
    res = train_lightgcn(data, cfg, tmp_path)
    assert res.best_valid and res.history[-1]["loss"] < res.history[0]["loss"]
    ue, ie = load_graph_embeddings(tmp_path, data.fingerprint)
    assert ue.device.type == "cpu" and ue.shape == (80, 16) and torch.isfinite(ie).all()


@pytest.mark.parametrize("cosine", [True, False])
def test_softmax_loss_matches_a_hand_computation(cosine):
    from glta_graph.lightgcn import LightGCN
    from glta_graph.train import _softmax_loss

    g = torch.Generator().manual_seed(0)
    model = LightGCN(5, 7, 4, 1)
    user_out, item_out = torch.randn(5, 4, generator=g), torch.randn(7, 4, generator=g)
    users, pos, neg = torch.tensor([0, 3]), torch.tensor([2, 5]), torch.tensor([1, 2, 6])
    got = _softmax_loss(model, user_out, item_out, users, pos, neg, 0.0, 0.5, cosine)

    def sim(a, b):
        return torch.nn.functional.cosine_similarity(a, b, dim=0) if cosine else a @ b

    want = []
    for u, p in zip(users.tolist(), pos.tolist(), strict=True):
        # item 2 is user 0's own positive: it is not a negative for that row
        negs = [n for n in neg.tolist() if n != p]
        scores = torch.stack([sim(user_out[u], item_out[i]) for i in [p, *negs]]) / 0.5
        want.append(torch.logsumexp(scores, 0) - scores[0])
    assert float(got) == pytest.approx(float(torch.stack(want).mean()), rel=1e-5)
    with_l2 = _softmax_loss(model, user_out, item_out, users, pos, neg, 0.1, 0.5, cosine)
    w_u, w_i = model.user_embedding.weight, model.item_embedding.weight
    reg = 0.5 * (w_u[users].pow(2).sum() + w_i[pos].pow(2).sum()) / 2
    assert float((with_l2 - got).detach()) == pytest.approx(float(0.1 * reg.detach()), abs=1e-6)


def test_softmax_training_learns_and_saves_unit_norm_embeddings(tmp_path):
    from glta_graph.evaluate import evaluate_embeddings

    data = clustered_dataset()
    cfg = LightGCNConfig(epochs=6, **{**FAST, "lr": 0.02}, loss="softmax", negatives=16,
                         temperature=0.2)
    res = train_lightgcn(data, cfg, tmp_path / "a")
    ue, ie = load_graph_embeddings(tmp_path / "a")
    assert torch.allclose(ue.norm(dim=1), torch.ones(80), atol=1e-5)
    assert torch.allclose(ie.norm(dim=1), torch.ones(60), atol=1e-5)
    assert res.history[-1]["loss"] < res.history[0]["loss"]
    trained = evaluate_embeddings(ue, ie, data, "test", (10,))["recall@10"]
    g = torch.Generator().manual_seed(0)
    rand = evaluate_embeddings(torch.randn(80, 16, generator=g), torch.randn(60, 16, generator=g),
                               data, "test", (10,))["recall@10"]
    assert trained > 0.5 and trained > 2 * rand
    train_lightgcn(data, cfg, tmp_path / "b")
    assert torch.equal(load_graph_embeddings(tmp_path / "b")[1], ie)
    saved = json.loads((tmp_path / "a" / "graph" / "config.json").read_text())
    assert saved["loss"] == "softmax" and saved["negatives"] == 16


@pytest.mark.parametrize("bad, match", [({"loss": "hinge"}, "loss"),
                                        ({"temperature": 0.0}, "temperature"),
                                        ({"negatives": 0}, "negatives"),
                                        ({"similarity": "l1"}, "similarity")])
def test_softmax_config_checks(bad, match):
    with pytest.raises(ValueError, match=match):
        LightGCNConfig(**bad)


def _resumed_matches_straight(data, settings, stop, end, tmp_path, between=None):
    """Train to ``stop`` epochs in RUN/r, (``between(RUN/r)``), resume to ``end``; assert the
    losses and item embeddings equal a straight ``end``-epoch run in RUN/s; return that run."""
    train_lightgcn(data, LightGCNConfig(epochs=stop, **settings), tmp_path / "r")
    if between is not None:
        between(tmp_path / "r")
    res = train_lightgcn(data, LightGCNConfig(epochs=end, **settings), tmp_path / "r")
    straight = train_lightgcn(data, LightGCNConfig(epochs=end, **settings), tmp_path / "s")
    assert [h["loss"] for h in res.history] == pytest.approx([h["loss"] for h in straight.history])
    torch.testing.assert_close(load_graph_embeddings(tmp_path / "r")[1],
                               load_graph_embeddings(tmp_path / "s")[1])
    return straight


def test_softmax_warmup_then_bpr_resumes_across_the_switch(tmp_path):
    data = clustered_dataset()
    warm = dict(**FAST, warmup_epochs=2, warmup_lr=0.02, negatives=16, similarity="dot",
                temperature=1.0)
    # stop right after the switch to BPR (epoch 2), then continue to epoch 4
    straight = _resumed_matches_straight(data, warm, 3, 5, tmp_path)
    losses = [h["loss"] for h in straight.history]
    # softmax over 1 + 16 candidates starts near log(17) = 2.83; BPR starts near log(2) = 0.69
    assert losses[0] > 1.5 and losses[2] < 1.0
    plain = train_lightgcn(data, LightGCNConfig(epochs=5, **FAST), tmp_path / "p")
    assert plain.history[0]["loss"] < 1.0
    assert not torch.equal(load_graph_embeddings(tmp_path / "p")[1],
                           load_graph_embeddings(tmp_path / "s")[1])
    with pytest.raises(ValueError, match="warmup_lr"):
        LightGCNConfig(warmup_lr=0.0)
    with pytest.raises(ValueError, match="warmup_epochs"):
        LightGCNConfig(warmup_epochs=-1)


def test_hardest_picks_the_highest_scored_candidate():
    from glta_graph.train import _hardest

    g = torch.Generator().manual_seed(0)
    user_out, item_out = torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    users = torch.tensor([0, 3, 3, 4])
    cand = torch.randint(0, 9, (4, 6), generator=g)
    got = _hardest(user_out.requires_grad_(), item_out, users, cand)
    for b in range(4):
        scores = [float(user_out[users[b]] @ item_out[c]) for c in cand[b]]
        assert int(got[b]) == int(cand[b][int(np.argmax(scores))])
    assert got.shape == (4,) and got.dtype == torch.int64 and not got.requires_grad


def test_hard_negative_training_is_exact_repeatable_and_resumable(tmp_path):
    data = clustered_dataset()
    hard = dict(**FAST, hard_negatives=8, l2=1e-3)
    # a sampler fed the repeated users never yields a positive, so neither does the choice
    sampler = NegativeSampler(data.train)
    users = sampler.users.repeat_interleave(8)
    cand = sampler.sample(users, generator=torch.Generator().manual_seed(1))
    assert not sampler.is_positive(users, cand).any()
    straight = _resumed_matches_straight(data, hard, 2, 4, tmp_path)
    uniform = train_lightgcn(data, LightGCNConfig(epochs=4, **{**hard, "hard_negatives": 1}),
                             tmp_path / "u")
    # the hardest of 8 candidates scores above a uniform one, so its BPR loss is larger
    assert straight.history[-1]["loss"] > uniform.history[-1]["loss"]
    config = json.loads((tmp_path / "s" / "graph" / "config.json").read_text())
    assert config["hard_negatives"] == 8
    # changing the number of candidates is a different run, not a resumable change
    with pytest.raises(ValueError, match="hard_negatives was 8 and is now 4"):
        train_lightgcn(data, LightGCNConfig(epochs=6, **{**hard, "hard_negatives": 4}),
                       tmp_path / "r")
    with pytest.raises(ValueError, match="hard_negatives"):
        LightGCNConfig(hard_negatives=0)


def test_state_from_before_hard_negatives_still_resumes(tmp_path):
    data = clustered_dataset()

    def drop_setting(run):  # the state as written by the version without the setting
        path = run / "state" / "graph" / "state.pt"
        state = torch.load(path, weights_only=True)
        config = json.loads(state["config"])
        del config["hard_negatives"]
        state["config"] = json.dumps(config)
        torch.save(state, path)

    _resumed_matches_straight(data, FAST, 2, 3, tmp_path, between=drop_setting)
    with pytest.raises(ValueError, match="hard_negatives was 1 and is now 2"):
        train_lightgcn(data, LightGCNConfig(epochs=4, **{**FAST, "hard_negatives": 2}),
                       tmp_path / "r")


def test_two_thread_training_repeats_bit_for_bit(tmp_path):
    # batches large enough for torch to parallelise the gradient of the row gathers: plain
    # advanced indexing (scatter-add backward) made these runs differ in the last bits
    data = clustered_dataset(users=1200, items=900, clusters=6, per_user=12, seed=1)
    cfg = LightGCNConfig(epochs=2, dim=64, layers=2, batch_size=4096, lr=0.01, eval_every=0,
                         seed=5, num_threads=2, hard_negatives=4)
    train_lightgcn(data, cfg, tmp_path / "a")
    train_lightgcn(data, cfg, tmp_path / "b")
    for a, b in zip(load_graph_embeddings(tmp_path / "a"), load_graph_embeddings(tmp_path / "b"),
                    strict=True):
        assert torch.equal(a, b)
