"""benchmarks/align/profile_gen.py: the users-per-batch comparison times and compares texts."""

from __future__ import annotations

import pytest


@pytest.fixture
def profile_gen(align_script):
    return align_script("profile_gen")


def test_compare_batch_sizes_times_every_size_on_the_same_users(profile_gen, tmp_path):
    from glta_align.config import UserItemConfig
    from glta_align.llm import load_tokenizer, tiny_llm
    from glta_align.profiles import user_prompts
    from glta_cli.testing import write_ratings_csv
    from glta_graph.data import load_dataset

    data = load_dataset(write_ratings_csv(tmp_path / "r.csv", users=12), format="csv",
                        text_col="text")
    llm = tiny_llm(load_tokenizer(), hidden_size=32, num_layers=1, seed=0)
    cfg = UserItemConfig(profile_items=3, description_tokens=8, profile_new_tokens=3)
    users = list(range(data.num_users))
    prompts = user_prompts(data, llm, cfg, users)
    out = profile_gen.compare_batch_sizes(llm, prompts, users, cfg, [4, 12], rounds=2)
    assert out["users"] == len(users) and out["rounds"] == 2
    assert set(out["seconds"]) == {"4", "12"}
    assert all(len(v) == 2 and min(v) > 0 for v in out["seconds"].values())
    assert out["ratio_to_first"]["4"] == pytest.approx(1.0)
    assert out["s_per_user"]["12"] == pytest.approx(sum(out["seconds"]["12"]) / 2 / len(users))
    # fp32: batching changes no greedy token of this tiny model
    assert out["users_with_identical_texts"] == {"4": len(users), "12": len(users)}


def test_compare_dtypes_times_each_precision_on_the_same_users(profile_gen, tmp_path):
    import torch
    from glta_align.config import UserItemConfig
    from glta_align.llm import load_tokenizer, tiny_llm
    from glta_cli.testing import write_ratings_csv
    from glta_graph.data import load_dataset

    data = load_dataset(write_ratings_csv(tmp_path / "r.csv", users=10), format="csv",
                        text_col="text")
    tok = load_tokenizer()
    loaded = []

    def load(dtype):  # the same tiny weights in each precision
        loaded.append(dtype)
        return tiny_llm(tok, hidden_size=32, num_layers=1, seed=0,
                        dtype={"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype])

    cfg = UserItemConfig(profile_items=3, description_tokens=8, profile_new_tokens=3,
                         profile_batch_size=4)
    users = list(range(data.num_users))
    out = profile_gen.compare_dtypes(data, users, cfg, ["float32", "bfloat16"],
                                     rounds=2, load=load)
    assert loaded == ["float32", "bfloat16"]
    assert out["precision"] == {"float32": "float32", "bfloat16": "bfloat16"}
    assert all(len(v) == 2 and min(v) > 0 for v in out["seconds"].values())
    assert out["ratio_to_first"]["float32"] == pytest.approx(1.0)
    assert out["s_per_user"]["bfloat16"] == pytest.approx(
        sum(out["seconds"]["bfloat16"]) / 2 / len(users))
    assert out["users_with_identical_texts"]["float32"] == len(users)
    assert 0 <= out["users_with_identical_texts"]["bfloat16"] <= len(users)


def _tiny_setup(tmp_path, users: int, num_layers: int = 1):
    """A small CSV dataset, a tiny fp32 LLM and 4-user generation batches:
    ``(data, llm, cfg, user indices)``."""
    from glta_align.config import UserItemConfig
    from glta_align.llm import load_tokenizer, tiny_llm
    from glta_cli.testing import write_ratings_csv
    from glta_graph.data import load_dataset

    data = load_dataset(write_ratings_csv(tmp_path / "r.csv", users=users), format="csv",
                        text_col="text")
    llm = tiny_llm(load_tokenizer(), hidden_size=32, num_layers=num_layers, seed=0)
    cfg = UserItemConfig(profile_items=3, description_tokens=8, profile_new_tokens=3,
                         profile_batch_size=4)
    return data, llm, cfg, list(range(data.num_users))


def test_compare_profile_prompts_times_each_layout(profile_gen, tmp_path):
    data, llm, cfg, users = _tiny_setup(tmp_path, users=10)
    out = profile_gen.compare_profile_prompts(data, llm, users, cfg, ["paper", "shared"],
                                              rounds=2)
    assert set(out["seconds"]) == {"paper", "shared"} and out["users"] == len(users)
    assert all(len(v) == 2 and min(v) > 0 for v in out["seconds"].values())
    # shared runs each user's descriptions once: fewer prompt tokens than both paper prompts
    assert 0 < out["prompt_tokens"]["shared"] < out["prompt_tokens"]["paper"]
    assert out["users_with_identical_texts"]["paper"] == len(users)


def test_alternate_times_every_variant_each_round_against_the_first(profile_gen, capsys):
    calls = []

    def variant(name, texts):
        def run():
            calls.append(name)
            return texts
        return run

    users = [0, 1, 2]
    same = {u: [f"text {u}"] for u in users}
    other = {**same, 2: ["changed"]}
    out = profile_gen.alternate({"a": variant("a", same), "b": variant("b", other)}, users,
                                rounds=2, label="v ")
    assert calls == ["a", "b", "a", "b"]  # alternating, round by round
    assert out["users"] == 3 and out["rounds"] == 2
    assert all(len(v) == 2 and min(v) >= 0 for v in out["seconds"].values())
    assert out["ratio_to_first"]["a"] == pytest.approx(1.0)
    assert out["users_with_identical_texts"] == {"a": 3, "b": 2}
    assert "round 2: v b:" in capsys.readouterr().out


def test_git_commit_of_another_folder(profile_gen, tmp_path):
    # this checkout: a 40-hex commit (dirty or not); a folder outside any repository: unknown
    here = profile_gen.git_commit()
    assert len(here.removesuffix("+dirty")) == 40
    assert profile_gen.git_commit(profile_gen.__file__.rsplit("/", 1)[0]) == here
    assert profile_gen.git_commit(tmp_path) == "unknown"


def test_isa_limits_lists_the_variables_that_are_set(profile_gen, monkeypatch):
    for name in profile_gen.ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert profile_gen.isa_limits() == {}
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "")  # set but empty: no limit
    assert profile_gen.isa_limits() == {"ATEN_CPU_CAPABILITY": "avx2"}


def test_write_result_prints_and_writes_the_json(profile_gen, tmp_path, capsys):
    import json

    doc = {"batch_sizes": {"users": 3}, "cpu": "x"}
    profile_gen.write_result(doc, str(tmp_path / "new" / "r.json"))  # folder created
    assert json.loads((tmp_path / "new" / "r.json").read_text()) == doc
    assert json.loads(capsys.readouterr().out) == doc
    assert list(tmp_path.joinpath("new").iterdir()) == [tmp_path / "new" / "r.json"]


def test_compare_mlp_times_layers_and_the_fused_block(profile_gen, tmp_path, monkeypatch):
    import copy

    from glta_align import int8
    from glta_align.int8 import Int8GatedMLP, quantize_linears_int8

    data, llm, cfg, users = _tiny_setup(tmp_path, users=8, num_layers=2)
    with pytest.raises(ValueError, match="no int8 gated MLP"):
        profile_gen.compare_mlp(data, llm, users, cfg, rounds=1)
    q = copy.copy(llm)
    q.model = copy.deepcopy(llm.model)
    quantize_linears_int8(q.causal_lm)
    fused_calls = []
    kernel = int8.int8_mlp_kernel

    def counted():
        fused_calls.append(1)
        return kernel()

    monkeypatch.setattr(int8, "int8_mlp_kernel", counted)
    forward = Int8GatedMLP.forward
    out = profile_gen.compare_mlp(data, q, users, cfg, rounds=2)
    assert Int8GatedMLP.forward is forward  # put back
    assert fused_calls  # the "fused" variant ran the one-graph kernel
    assert out["mlps"] == 2 and list(out["seconds"]) == ["layers", "fused"]
    assert all(len(v) == 2 and min(v) > 0 for v in out["seconds"].values())
    assert out["ratio_to_first"]["layers"] == pytest.approx(1.0)
    assert 0 <= out["users_with_identical_texts"]["fused"] <= len(users)


def test_compare_attention_times_both_sdpa_paths_with_the_same_texts(profile_gen, tmp_path,
                                                                     monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa_mod
    from glta_align.llm import SDPA_GROUPED

    data, llm, cfg, users = _tiny_setup(tmp_path, users=8, num_layers=2)
    copies = []
    repeat = sdpa_mod.repeat_kv
    monkeypatch.setattr(sdpa_mod, "repeat_kv", lambda x, n: copies.append(n) or repeat(x, n))
    out = profile_gen.compare_attention(data, llm, users, cfg, rounds=2)
    assert llm.causal_lm.config._attn_implementation == SDPA_GROUPED  # put back
    assert copies  # the "sdpa" variant ran transformers' own (heads repeated under a mask)
    assert list(out["seconds"]) == ["sdpa", SDPA_GROUPED]
    assert all(len(v) == 2 and min(v) > 0 for v in out["seconds"].values())
    # the same kernel on the same numbers: every text identical
    assert out["users_with_identical_texts"][SDPA_GROUPED] == len(users)
