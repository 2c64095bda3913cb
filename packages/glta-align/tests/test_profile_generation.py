"""Batched greedy generation for profile/prediction text: equal to unbatched decoding,
per-row stops, fixed batches (a resumed run writes the same texts), the file's key."""

from __future__ import annotations

import json

import pytest
import torch

from glta_align.config import UserItemConfig
from glta_align.llm import quiet_transformers, tiny_llm
from glta_align.profiles import (
    ProfileError,
    common_prefix_length,
    generate_profiles,
    greedy_generate,
    read_profiles,
)


@pytest.fixture
def lively(tokenizer):
    """A tiny Llama with large random weights (its greedy outputs vary token to token)."""
    llm = tiny_llm(tokenizer, hidden_size=64, num_layers=2, seed=0)
    gen = torch.Generator().manual_seed(1)
    for p in llm.causal_lm.parameters():
        if p.dim() == 2:
            p.data.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return llm


def _prompts():
    gen = torch.Generator().manual_seed(0)
    prefix = [1, 500, 600, 700]
    return [prefix + torch.randint(100, 5000, (n,), generator=gen).tolist() for n in (3, 9, 5, 12)]


def test_common_prefix_length():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[1, 2], [1, 2]]) == 1  # a body keeps >= 1 token
    assert common_prefix_length([[7, 1], [8, 1]]) == 0 and common_prefix_length([]) == 0


@pytest.mark.parametrize("prefix", [True, False])
def test_batched_equals_one_prompt_at_a_time(lively, prefix):
    prompts = _prompts()
    P = common_prefix_length(prompts) if prefix else 0
    assert not prefix or P == 4
    out = greedy_generate(lively, prompts, 8, prefix_len=P, stop_ids=set())
    for p, o in zip(prompts, out, strict=True):
        with quiet_transformers():
            ref = lively.causal_lm.generate(
                input_ids=torch.tensor([p]), max_new_tokens=8, do_sample=False,
                eos_token_id=None, pad_token_id=0)[0, len(p):].tolist()
        assert o == ref
    assert len(set(map(tuple, out))) == len(out) and len(set(out[0])) > 1


@pytest.mark.parametrize("prefix", [True, False])
def test_suffixes_equal_the_whole_prompts(lively, prefix):
    """Rows b * S + s continue prompt b with suffix s: equal to generating each whole prompt
    alone (suffixes of different lengths, bodies of different lengths)."""
    prompts = _prompts()
    ends = [[900, 901, 902], [903], [904, 905]]
    P = 4 if prefix else 0
    out = greedy_generate(lively, prompts, 6, prefix_len=P, stop_ids=set(), suffixes=ends)
    assert len(out) == len(prompts) * len(ends)
    for b, p in enumerate(prompts):
        for s, end in enumerate(ends):
            ref = greedy_generate(lively, [p + end], 6, stop_ids=set())[0]
            assert out[b * len(ends) + s] == ref, (b, s)
    # rows that stop early leave the batch (a quarter finished): the others go on unchanged
    stops = {o[1] for o in out[:4]}  # rows 0-3 (at least) end by their second token
    cut = greedy_generate(lively, prompts, 6, prefix_len=P, stop_ids=stops, suffixes=ends)
    for o, c in zip(out, cut, strict=True):
        n = next((i for i, t in enumerate(o) if t in stops), len(o))
        assert c == o[:n]
    assert sum(len(c) < 6 for c in cut) >= 4
    with pytest.raises(ValueError, match="non-empty"):
        greedy_generate(lively, prompts, 2, suffixes=[[1], []])


def test_rows_stop_at_their_stop_token(lively):
    prompts = _prompts()
    full = greedy_generate(lively, prompts, 8, prefix_len=4, stop_ids=set())
    stop = full[1][3]
    cut = greedy_generate(lively, prompts, 8, prefix_len=4, stop_ids={stop})
    for f, c in zip(full, cut, strict=True):
        n = f.index(stop) if stop in f else len(f)
        assert c == f[:n]
    assert cut[1] == full[1][:3]
    with pytest.raises(ValueError, match="longer than prefix_len"):
        greedy_generate(lively, [[1, 2]], 2, prefix_len=2)


def test_resumed_generation_writes_the_same_texts(tmp_path, toy, lively):
    cfg = UserItemConfig(profile_batch_size=3, profile_new_tokens=4)
    whole = generate_profiles(toy, tmp_path / "a", lively, cfg)

    class Stop(Exception):
        pass

    def stop_after_first_batch(event):
        if event.kind == "step":
            raise Stop

    with pytest.raises(Stop):
        generate_profiles(toy, tmp_path / "b", lively, cfg, progress=stop_after_first_batch)
    path = tmp_path / "b" / "profiles.jsonl"
    lines = path.read_text().splitlines()
    first = len(lines) - 1
    assert 0 < first < toy.num_users
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # torn last line
    events = []
    resumed = generate_profiles(toy, tmp_path / "b", lively, cfg, progress=events.append)
    assert resumed == whole
    assert events[0].kind == "start" and events[0].step == first - 1
    assert events[-1].kind == "end" and events[-1].step == toy.num_users


def test_file_records_template_and_precision(tmp_path, toy, lively):
    cfg = UserItemConfig(profile_batch_size=4, profile_new_tokens=2)
    generate_profiles(toy, tmp_path, lively, cfg, users=[0, 1])
    meta, _ = read_profiles(tmp_path / "profiles.jsonl")
    assert meta["precision"] == "float32" and len(meta["template"]) == 16
    # a file written before these keys existed is still accepted
    path = tmp_path / "profiles.jsonl"
    lines = path.read_text().splitlines()
    old = {k: v for k, v in meta.items() if k not in ("template", "precision")}
    path.write_text("\n".join([json.dumps({"meta": old}), *lines[1:]]) + "\n")
    assert sorted(generate_profiles(toy, tmp_path, lively, cfg, users=[0, 1, 2])) == [0, 1, 2]
    # another precision is another key
    lines = path.read_text().splitlines()
    path.write_text("\n".join([json.dumps({"meta": {**meta, "precision": "int8"}}),
                               *lines[1:]]) + "\n")
    with pytest.raises(ProfileError, match="precision"):
        generate_profiles(toy, tmp_path, lively, cfg, users=[3])


def test_shared_prompts_differ_only_in_their_ending(toy, lively):
    from glta_align.profiles import user_prompts

    cfg = UserItemConfig(profile_prompt="shared")
    prompts = user_prompts(toy, lively, cfg, range(toy.num_users))
    tok = lively.tokenizer
    ends = None
    for u in range(toy.num_users):
        a, b = prompts[u]
        n = common_prefix_length([a, b])
        assert ends is None or [a[n:], b[n:]] == ends  # the same two endings for every user
        ends = [a[n:], b[n:]]
        assert "Descriptions of the user's interacted items: " in tok.decode(a[:n])
        whole = tok.decode(a)
        assert whole.index("; ") < whole.index("Use 5 tags") and "Use 5 words" in tok.decode(b)
    from glta_align.profiles import _shared_split

    bodies, split_ends = _shared_split(lively, cfg, prompts, range(toy.num_users))
    assert split_ends == ends  # where the two prompts part, for every user
    for u in range(toy.num_users):
        assert [bodies[u] + e for e in split_ends] == list(prompts[u])
    paper = user_prompts(toy, lively, UserItemConfig(), [0])[0]
    assert tok.decode(paper[0]).index("Use 5 tags") < tok.decode(paper[0]).index(";")


def test_shared_generation_equals_each_prompt_alone(tmp_path, toy, lively):
    """profile_prompt = "shared": one run of each user's descriptions, both texts continue
    from it; the texts equal generating each whole prompt alone (fp32), and the file records
    the layout (a paper-layout file is refused, and an older file without the key reads as
    the paper layout)."""
    from glta_align.profiles import user_prompts

    cfg = UserItemConfig(profile_prompt="shared", profile_batch_size=3, profile_new_tokens=5)
    got = generate_profiles(toy, tmp_path / "s", lively, cfg)
    prompts = user_prompts(toy, lively, cfg, range(toy.num_users))
    for u in (0, 4, toy.num_users - 1):
        for k, name in enumerate(("profile", "predict")):
            ids = greedy_generate(lively, [prompts[u][k]], 5)[0]
            want = " ".join(lively.tokenizer.decode(ids, skip_special_tokens=True).split())
            assert got[u][name] == want, (u, name)
    meta, _ = read_profiles(tmp_path / "s" / "profiles.jsonl")
    assert meta["profile_prompt"] == "shared"
    paper = UserItemConfig(profile_batch_size=3, profile_new_tokens=5)
    with pytest.raises(ProfileError, match="profile_prompt"):
        generate_profiles(toy, tmp_path / "s", lively, paper)
    # a file from before the setting existed holds paper-layout texts
    generate_profiles(toy, tmp_path / "p", lively, paper, users=[0, 1])
    path = tmp_path / "p" / "profiles.jsonl"
    lines = path.read_text().splitlines()
    meta, _ = read_profiles(path)
    old = {k: v for k, v in meta.items() if k != "profile_prompt"}
    path.write_text("\n".join([json.dumps({"meta": old}), *lines[1:]]) + "\n")
    assert sorted(generate_profiles(toy, tmp_path / "p", lively, paper, users=[0, 1, 2])) \
        == [0, 1, 2]
    with pytest.raises(ProfileError, match="profile_prompt"):
        generate_profiles(toy, tmp_path / "p", lively, cfg, users=[0])
