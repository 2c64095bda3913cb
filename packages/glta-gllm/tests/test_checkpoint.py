import json

import pytest
import torch

from glta_gllm.checkpoint import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    CheckpointError,
    FingerprintMismatchError,
    atomic_write_json,
    load_artifact,
    read_metadata,
    save_artifact,
)


def test_roundtrip_and_metadata(tmp_path):
    w = torch.randn(4, 3).t()  # non-contiguous on purpose
    save_artifact(tmp_path / "a", {"w": w}, {"dim": 3}, dataset_fingerprint="abc")
    tensors, config, meta = load_artifact(tmp_path / "a", expected_fingerprint="abc")
    torch.testing.assert_close(tensors["w"], w)
    assert config == {"dim": 3}
    assert meta["format"] == "pt" and meta["glta_format"] == "1"
    assert read_metadata(tmp_path / "a")["dataset_fingerprint"] == "abc"
    assert (tmp_path / "a" / "README.md").is_file()


def test_fingerprint_mismatch_names_both(tmp_path):
    save_artifact(tmp_path / "a", {"w": torch.zeros(1)}, {}, dataset_fingerprint="aaa")
    with pytest.raises(FingerprintMismatchError, match=r"aaa.*bbb"):
        load_artifact(tmp_path / "a", expected_fingerprint="bbb")


def test_overwrite_keeps_no_leftovers(tmp_path):
    save_artifact(tmp_path / "a", {"w": torch.zeros(1)}, {"v": 1})
    save_artifact(tmp_path / "a", {"w": torch.ones(1)}, {"v": 2})
    assert load_artifact(tmp_path / "a")[1] == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_failed_save_leaves_previous_version(tmp_path):
    save_artifact(tmp_path / "a", {"w": torch.zeros(1)}, {"v": 1})
    with pytest.raises(TypeError):
        save_artifact(tmp_path / "a", {"w": torch.ones(1)}, {"v": object()})
    assert load_artifact(tmp_path / "a")[1] == {"v": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


@pytest.mark.parametrize("missing", [CONFIG_NAME, WEIGHTS_NAME])
def test_missing_file_is_named(tmp_path, missing):
    save_artifact(tmp_path / "a", {"w": torch.zeros(1)}, {})
    (tmp_path / "a" / missing).unlink()
    with pytest.raises(CheckpointError, match=missing):
        load_artifact(tmp_path / "a")


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_artifact(tmp_path / "nope")


def test_atomic_write_json(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 2, "b": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_resume_state_roundtrip_and_checks(tmp_path):
    from glta_gllm.checkpoint import load_resume_state, save_resume_state

    assert load_resume_state(tmp_path, fingerprint="f", key={}, what="x") is None
    payload = {"w": torch.arange(3.0), "config": json.dumps({"lr": 0.1, "epochs": 5}),
               "fingerprint": "f"}
    save_resume_state(tmp_path, payload)
    state = load_resume_state(tmp_path, fingerprint="f", key={"lr": 0.1}, what="stage2")
    torch.testing.assert_close(state["w"], torch.arange(3.0))
    with pytest.raises(FingerprintMismatchError, match=r"f.*g"):
        load_resume_state(tmp_path, fingerprint="g", key={}, what="stage2")
    with pytest.raises(ValueError, match=r"cannot resume stage2: lr was 0\.1 and is now 0\.2"):
        load_resume_state(tmp_path, fingerprint="f", key={"lr": 0.2}, what="stage2")
    # a setting the stored state predates counts as its stated default, and only then
    key = {"lr": 0.1, "neg": 1}
    with pytest.raises(ValueError, match="neg was None and is now 1"):
        load_resume_state(tmp_path, fingerprint="f", key=key, what="stage2")
    assert load_resume_state(tmp_path, fingerprint="f", key=key, what="s", defaults={"neg": 1})
    with pytest.raises(ValueError, match="neg was 1 and is now 2"):
        load_resume_state(tmp_path, fingerprint="f", key={"neg": 2}, what="s", defaults={"neg": 1})
    with pytest.raises(ValueError, match=r"lr was 0\.1 and is now 0\.3"):
        load_resume_state(tmp_path, fingerprint="f", key={"lr": 0.3}, what="s",
                          defaults={"lr": 0.3})
    (tmp_path / "state.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read resume state"):
        load_resume_state(tmp_path, fingerprint="f", key={}, what="stage2")


def test_read_config_and_load_rows_of_a_tensor(tmp_path) -> None:
    from glta_gllm.checkpoint import read_config

    w = torch.arange(12.0).reshape(6, 2)
    save_artifact(tmp_path / "a", {"w": w, "b": torch.ones(3)}, {"num_items": 6})
    assert read_config(tmp_path / "a") == {"num_items": 6}
    tensors, _, _ = load_artifact(tmp_path / "a", rows={"w": (2, 5)})
    assert torch.equal(tensors["w"], w[2:5])
    assert torch.equal(tensors["b"], torch.ones(3))
    (tmp_path / "a" / "config.json").write_text("{", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"config\.json: not valid JSON"):
        read_config(tmp_path / "a")


def test_saved_artifact_folders_follow_the_umask(tmp_path):
    import os
    import stat

    from glta_gllm.checkpoint import save_artifact

    old = os.umask(0o027)
    try:
        out = save_artifact(tmp_path / "a", {"w": torch.zeros(2)}, {"x": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o750  # not mkdtemp's 0700
