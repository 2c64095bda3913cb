import copy
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from align_testutil import make_run, toy_data
from glta_gllm.checkpoint import CheckpointError, FingerprintMismatchError
from glta_graph.evaluate import exclusion_matrix

from glta_align.config import ItemTextConfig, UserItemConfig
from glta_align.int8 import quantize_linears_int8
from glta_align.item_text import train_item_text
from glta_align.llm import tiny_llm
from glta_align.recommender import GLTARecommender, pick_first_k
from glta_align.user_item import train_user_item


def test_pick_first_k_takes_each_slots_best_untaken():
    cands = torch.tensor([[[3, 1, 2, 0], [3, 2, 0, 1], [3, 2, 1, 0]]])
    scores = -torch.arange(12.0).reshape(1, 3, 4)
    s, i = pick_first_k(cands, scores, 4)
    assert i.tolist() == [[3, 2, 1, 0]]  # slot 2 (index 1): 3 taken -> 2; slot 3: 3,2 -> 1
    assert s.tolist() == [[-0.0, -5.0, -10.0, -11.0]]


def _train_toy_run(folder, tokenizer, **stage3):
    """A toy run trained through stages 2 and 3 (``stage3``: extra UserItemConfig fields)."""
    toy = toy_data()
    run = make_run(folder / "run", toy)
    tiny = tiny_llm(tokenizer, seed=0)
    train_item_text(toy, run, ItemTextConfig(epochs=1, items_per_instance=3), llm=tiny)
    train_user_item(toy, run, UserItemConfig(epochs=1, num_slots=3, profile_new_tokens=2,
                                             eval_batch_size=5, **stage3), llm=tiny)
    return run


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tokenizer):
    """One trained toy run shared by this module's tests (they only read it)."""
    return _train_toy_run(tmp_path_factory.mktemp("rec"), tokenizer)


@pytest.mark.parametrize("ranking", ["first_k", "first", "ar", "mean"])
def test_recommend_excludes_train_and_is_valid(trained, toy, tiny, ranking):
    rec = GLTARecommender.from_run(trained, llm=tiny)
    users = [3, 0, 7]
    scores, items = rec.recommend(users, 6, ranking=ranking)
    assert scores.shape == items.shape == (3, 6)
    for row, u in zip(items.tolist(), users, strict=True):
        assert len(set(row)) == 6
        assert not set(row) & set(toy.user_items("train", u).tolist())
    if ranking == "first":
        assert bool((scores[:, :-1] >= scores[:, 1:]).all())
    # batching and order do not change a user's list
    _, i2 = rec.recommend([7, 3], 6, ranking=ranking)
    assert i2.tolist() == [items[2].tolist(), items[0].tolist()]


def test_kept_slots_serve_later_rankings_and_other_users_still_run(trained, tiny):
    rec = GLTARecommender.from_run(trained, llm=tiny)
    rec.keep_slots = True
    _, first = rec.recommend([3, 0, 7], 6, ranking="first_k")
    assert sorted(rec.slots) == [0, 3, 7] and rec.slots[3].shape[0] == 3  # (S, D)
    ran: list[list[int]] = []
    slot_hidden = rec._slot_hidden

    def spy(users, *args, **kwargs):
        ran.append(list(users))
        return slot_hidden(users, *args, **kwargs)

    rec._slot_hidden = spy
    _, mean = rec.recommend([7, 3], 6, ranking="mean")
    assert ran == []  # both users' slots were kept
    _, mixed = rec.recommend([0, 5, 3], 6, ranking="first_k")
    assert ran == [[5]] and 5 in rec.slots  # only the new user ran
    assert mixed[0].tolist() == first[1].tolist() and mixed[2].tolist() == first[0].tolist()
    fresh = GLTARecommender.from_run(trained, llm=tiny)
    assert fresh.recommend([7, 3], 6, ranking="mean")[1].tolist() == mean.tolist()
    assert fresh.recommend([5], 6, ranking="first_k")[1].tolist() == [mixed[1].tolist()]
    # ar feeds picks back through the LLM: never from the kept slots
    rec.recommend([3], 4, ranking="ar")
    assert ran[-1] == [3]


@pytest.fixture(scope="module")
def trained_text_first(tmp_path_factory, tokenizer):
    """A toy run trained with the profile and prediction text first in the prompt."""
    return _train_toy_run(tmp_path_factory.mktemp("rec_tf"), tokenizer,
                          prompt_order="text-first")


@pytest.mark.parametrize("text_head", [False, True])
def test_autoregressive_ranking_equals_running_the_prompt_at_every_rank(
        trained, trained_text_first, toy, tiny, text_head):
    """``ar`` appends each pick to the prompt's kept keys/values: the same lists and scores
    as running the whole prompt again with the picks as slot tokens at every rank (also
    when the leading text runs apart and its keys/values are kept, as with text first)."""
    from glta_graph.evaluate import select_rows

    from glta_align.user_item import eval_sample

    rec = GLTARecommender.from_run(trained_text_first if text_head else trained, llm=tiny)
    users, k = [3, 0, 7, 5], 6
    scores, items = rec.recommend(users, k, ranking="ar")
    assert rec.runner._kept is None  # the kept keys/values released after ranking
    ex = select_rows(toy.train, torch.tensor(users))
    with torch.no_grad():
        want, picked = rec._rank_ar(users, k, ex, kept_cache=False)
    assert (rec.runner.last_shape.head_len > 0) == text_head  # the leading text ran apart
    assert items.tolist() == picked.tolist()
    torch.testing.assert_close(scores, want, rtol=1e-4, atol=1e-4)
    # what extend() needs: a kept batch, made without gradient
    seqs, _, _ = rec.prompter.build([eval_sample(toy, rec.config, 0)], 1)
    with torch.enable_grad(), pytest.raises(ValueError, match="keep_cache needs no gradient"):
        rec.runner.hidden_states(seqs, torch.zeros(2, tiny.hidden_size), keep_cache=True)
    with pytest.raises(RuntimeError, match="extend"):
        rec.runner.extend(torch.zeros(1, tiny.hidden_size))


def test_mean_ranking_is_the_slots_mean_log_softmax(trained, toy, tiny):
    """``mean`` ranks by the k slots' mean log-softmax over the whole catalogue."""
    rec = GLTARecommender.from_run(trained, llm=tiny)
    users = list(range(toy.num_users))
    k = toy.num_items - int(np.diff(toy.train.crow_indices().numpy()).max())
    with torch.no_grad():
        hidden = rec._slot_hidden(users).float()  # (U, S, H)
        per_slot = torch.log_softmax(rec.head(hidden).float(), dim=-1)  # (U, S, I)
    for r, u in enumerate(users):
        per_slot[r, :, toy.user_items("train", u)] = float("-inf")
    _, items = rec.recommend(users, k, ranking="mean")
    assert items.tolist() == per_slot.mean(dim=1).topk(k, dim=1).indices.tolist()
    # a full ordering no single slot gives
    for slot in range(per_slot.shape[1]):
        assert items.tolist() != per_slot[:, slot].topk(k, dim=1).indices.tolist()


def test_evaluate_uses_lightgcn_protocol(trained, toy, tiny):
    rec = GLTARecommender.from_run(trained, llm=tiny)
    m = rec.evaluate("test", ks=(2, 5))
    has = int((np.diff(toy.test.crow_indices().numpy()) > 0).sum())
    assert m["users"] == has
    assert {"precision@2", "recall@5", "ndcg@5", "hit_rate@2"} <= set(m)
    ex = exclusion_matrix(toy, ("train", "valid"))
    _, items = rec.recommend(range(toy.num_users), 5, exclude=ex)
    for u, row in enumerate(items.tolist()):
        assert not set(row) & set(ex[u].to_dense().nonzero().flatten().tolist())


def test_bad_requests_and_artifacts(trained, toy, tiny, tmp_path):
    rec = GLTARecommender.from_run(trained, llm=tiny)
    with pytest.raises(ValueError, match="user index 999"):
        rec.recommend([999], 3)
    with pytest.raises(ValueError, match="larger than the catalogue"):
        rec.recommend([0], toy.num_items)
    with pytest.raises(ValueError, match="split"):
        rec.evaluate("train")
    with pytest.raises(CheckpointError, match="tiny in-memory test model"):
        GLTARecommender.from_run(trained)
    # an artifact from another dataset is refused, naming both fingerprints
    from glta_align.projector import NodeProjector

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    NodeProjector(8, 64).save_pretrained(copy / "item_projector", dataset_fingerprint="0" * 16)
    with pytest.raises(FingerprintMismatchError, match=toy.fingerprint):
        GLTARecommender.from_run(copy, llm=tiny)


def test_precision_mismatch_with_training_warns(trained, tiny):
    cfg = json.loads((trained / "user_projector" / "config.json").read_text())
    assert cfg["llm_precision"] == "float32" and cfg["llm_dtype"] == "float32"
    assert cfg["llm_pointwise"] is False and cfg["llm_compiled_layers"] == 0
    int8_llm = copy.deepcopy(tiny)
    quantize_linears_int8(int8_llm.causal_lm)
    with pytest.warns(UserWarning, match=r"ran the LLM in float32, ranking runs it in int8"):
        GLTARecommender.from_run(trained, llm=int8_llm)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GLTARecommender.from_run(trained, llm=tiny)  # same precision: silent
