import json
import subprocess
import zlib

import pytest
from align_testutil import PY, TESTS, subprocess_env, toy_data

from glta_align.config import UserItemConfig
from glta_align.profiles import (
    ProfileError,
    generate_profiles,
    profile_items,
    read_profiles,
    text_kinds,
)


def test_profile_items_fixed_sample(toy):
    a = profile_items(toy, 3, 4, seed=0)
    assert a == profile_items(toy, 3, 4, seed=0) and len(a) == 4
    assert set(a) <= set(toy.user_items("train", 3).tolist())


def test_generation_writes_and_is_reused(tmp_path, toy, tiny):
    cfg = UserItemConfig(profile_batch_size=5, profile_new_tokens=2)
    out = generate_profiles(toy, tmp_path, tiny, cfg, users=[0, 1, 2])
    assert sorted(out) == [0, 1, 2]
    meta, rows = read_profiles(tmp_path / "profiles.jsonl")
    assert meta["fingerprint"] == toy.fingerprint and sorted(rows) == [0, 1, 2]
    out = generate_profiles(toy, tmp_path, tiny, cfg, users=[0, 1, 2, 3])
    assert sorted(out) == [0, 1, 2, 3]
    assert all(out[u] == rows[u] for u in rows)  # kept, not regenerated
    with pytest.raises(ProfileError, match="other settings"):
        generate_profiles(toy, tmp_path, tiny, UserItemConfig(profile_new_tokens=3), users=[5])


def test_stale_file_is_regenerated_when_asked(tmp_path, toy, tiny):
    """A file made in another precision (here: its meta says int8) is refused by default
    and, with ``stale="regenerate"``, started afresh with the settings in use."""
    cfg = UserItemConfig(profile_batch_size=5, profile_new_tokens=2)
    generate_profiles(toy, tmp_path, tiny, cfg, users=[0, 1])
    path = tmp_path / "profiles.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = json.loads(lines[0])["meta"]
    assert meta["precision"] == tiny.precision != "int8"
    other = {**meta, "precision": "int8"}
    planted = {"user": 0, "profile": "int8 text", "predict": "int8 text"}
    path.write_text("\n".join([json.dumps({"meta": other}), json.dumps(planted)]) + "\n",
                    encoding="utf-8")
    with pytest.raises(ProfileError, match="precision"):
        generate_profiles(toy, tmp_path, tiny, cfg, users=[0, 1])
    events = []
    out = generate_profiles(toy, tmp_path, tiny, cfg, users=[0, 1], stale="regenerate",
                            progress=events.append)
    assert sorted(out) == [0, 1] and out[0]["profile"] != "int8 text"
    assert read_profiles(path)[0]["precision"] == tiny.precision
    assert any(e.kind == "info" and "regenerating" in e.message for e in events)
    # an unknown choice is refused
    with pytest.raises(ValueError, match="stale"):
        generate_profiles(toy, tmp_path, tiny, cfg, users=[0], stale="keep")


def test_text_kinds_follow_the_prompt():
    assert text_kinds(UserItemConfig()) == ["profile", "predict"]
    assert text_kinds(UserItemConfig(use_predict=False)) == ["profile"]
    assert text_kinds(UserItemConfig(use_profile=False)) == ["predict"]
    # neither used (a baseline reading the file wants both), or the shared prompts (one
    # pass over the descriptions serves both): both
    assert text_kinds(UserItemConfig(use_profile=False, use_predict=False)) == [
        "profile", "predict"]
    assert text_kinds(UserItemConfig(use_predict=False, profile_prompt="shared")) == [
        "profile", "predict"]


def test_only_the_texts_the_prompt_uses_are_generated(tmp_path, toy, tiny, monkeypatch):
    """Without the prediction text only the profile prompts run (half the generation); the
    profile texts equal those written next to the prediction texts; a file holding both
    serves a profile-only run (users added to it get both), and a profile-only file is
    regenerated for a run that uses the prediction text."""
    import glta_align.profiles as profiles

    calls = []
    generate = profiles.greedy_generate

    def counting(llm, prompts, *args, **kwargs):
        # the real generation runs; its rows are replaced by a word naming the prompt (the
        # tiny random LLM writes empty texts), so texts of different prompts differ
        calls.append(len(prompts))
        assert len(generate(llm, prompts, *args, **kwargs)) == len(prompts)
        return [llm.tokenizer.encode(f" w{zlib.crc32(str(list(p)).encode()) % 99991}",
                                     add_special_tokens=False) for p in prompts]

    monkeypatch.setattr(profiles, "greedy_generate", counting)
    both = UserItemConfig(profile_batch_size=5, profile_new_tokens=3)
    only = UserItemConfig(profile_batch_size=5, profile_new_tokens=3, use_predict=False)
    full = generate_profiles(toy, tmp_path / "both", tiny, both, users=[0, 1, 2])
    assert sum(calls) == 6
    calls.clear()
    events = []
    pf = generate_profiles(toy, tmp_path / "pf", tiny, only, users=[0, 1, 2],
                           progress=events.append)
    assert sum(calls) == 3  # the profile prompts alone
    assert {e.message for e in events if e.kind == "start"} == {"profile text"}
    assert {u: r["profile"] for u, r in pf.items()} == {u: r["profile"] for u, r in full.items()}
    assert all(r["predict"] == "" for r in pf.values())
    assert all(r["profile"] and r["predict"] and r["profile"] != r["predict"]
               for r in full.values())
    assert read_profiles(tmp_path / "pf" / "profiles.jsonl")[0]["texts"] == ["profile"]
    # a both-text file serves the profile-only run; a user added to it gets both texts
    calls.clear()
    more = generate_profiles(toy, tmp_path / "both", tiny, only, users=[0, 1, 2, 3])
    # (the batch holding the new user, all four users here, runs again, for both kinds)
    assert all(more[u] == full[u] for u in full) and calls == [4, 4] and more[3]["predict"]
    assert read_profiles(tmp_path / "both" / "profiles.jsonl")[0]["texts"] == [
        "profile", "predict"]
    # a profile-only file lacks what a run with the prediction text needs
    with pytest.raises(ProfileError, match="texts"):
        generate_profiles(toy, tmp_path / "pf", tiny, both, users=[0, 1, 2])
    again = generate_profiles(toy, tmp_path / "pf", tiny, both, users=[0, 1, 2],
                              stale="regenerate")
    assert again == full
    # a file written before the kinds were recorded holds both
    path = tmp_path / "both" / "profiles.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines()
    meta = json.loads(lines[0])["meta"]
    del meta["texts"]
    path.write_text("\n".join([json.dumps({"meta": meta}), *lines[1:]]) + "\n",
                    encoding="utf-8")
    calls.clear()
    assert generate_profiles(toy, tmp_path / "both", tiny, only, users=[0, 1, 2]) == {
        u: more[u] for u in (0, 1, 2, 3)}
    assert calls == []


def test_torn_last_line_is_dropped(tmp_path):
    path = tmp_path / "profiles.jsonl"
    path.write_text(json.dumps({"meta": {"fingerprint": "f"}}) + "\n"
                    + json.dumps({"user": 0, "profile": "a", "predict": "b"}) + "\n"
                    + '{"user": 1, "prof')
    _, rows = read_profiles(path)
    assert list(rows) == [0]
    path.write_text('{"bad\n' + json.dumps({"user": 0, "profile": "a", "predict": "b"}) + "\n")
    with pytest.raises(ProfileError, match=":1:"):
        read_profiles(path)


@pytest.mark.slow  # subprocesses: ~30 s on a quiet 2-core machine
def test_killed_generation_continues_where_it_stopped(tmp_path):
    env = subprocess_env()
    run = tmp_path / "run"
    r = subprocess.run([PY, str(TESTS / "_worker.py"), "profiles", str(run), "8"], env=env)
    assert r.returncode == -9
    _, partial = read_profiles(run / "profiles.jsonl")
    data = toy_data()
    assert 8 <= len(partial) < data.num_users
    subprocess.run([PY, str(TESTS / "_worker.py"), "profiles", str(run), "0"], env=env,
                   check=True)
    _, done = read_profiles(run / "profiles.jsonl")
    assert sorted(done) == list(range(data.num_users))
    assert all(done[u] == partial[u] for u in partial)
