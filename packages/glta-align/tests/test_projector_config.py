import dataclasses

import pytest
import torch
from glta_gllm.checkpoint import CheckpointError, FingerprintMismatchError

from glta_align.config import AlignConfigError, ItemTextConfig, UserItemConfig
from glta_align.projector import NodeProjector


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_projector_shapes_scale_and_round_trip(tmp_path, kind):
    torch.manual_seed(0)
    proj = NodeProjector(16, 48, kind, init_scale=0.5)
    x = torch.randn(1000, 16)
    out = proj(x)
    assert out.shape == (1000, 48)
    rms = out.pow(2).mean().sqrt().item()
    assert 0.2 < rms < (1.0 if kind == "linear" else 2.0)
    proj.save_pretrained(tmp_path / "p", dataset_fingerprint="abc", role="user")
    again = NodeProjector.from_pretrained(tmp_path / "p", expected_fingerprint="abc",
                                          in_dim=16, out_dim=48)
    torch.testing.assert_close(again(x), out)
    with pytest.raises(FingerprintMismatchError, match="abc"):
        NodeProjector.from_pretrained(tmp_path / "p", expected_fingerprint="zzz")
    with pytest.raises(CheckpointError, match="out_dim is 48, expected 64"):
        NodeProjector.from_pretrained(tmp_path / "p", out_dim=64)


def test_projector_errors():
    with pytest.raises(ValueError, match="kind"):
        NodeProjector(4, 4, "conv")
    with pytest.raises(ValueError, match="last dim 4"):
        NodeProjector(4, 8)(torch.zeros(2, 5))
    assert "kind='linear'" in repr(NodeProjector(4, 8))


@pytest.mark.parametrize(("cls", "field", "value", "match"), [
    (ItemTextConfig, "items_per_instance", 0, "items_per_instance"),
    (ItemTextConfig, "epochs", 0, "epochs = 0"),
    (ItemTextConfig, "head", "mlp", "head = 'mlp'"),
    (UserItemConfig, "ranking", "beam", "ranking = 'beam'"),
    (UserItemConfig, "num_slots", 0, "num_slots"),
    (UserItemConfig, "targets_from", "all", "targets_from"),
    (UserItemConfig, "lr", -1.0, "lr"),
])
def test_config_errors_name_the_field(cls, field, value, match):
    with pytest.raises(AlignConfigError, match=match):
        cls(**{field: value})


def test_config_round_trip_and_help():
    cfg = UserItemConfig(num_slots=4, ranking="first", lora={"r": 4})
    assert UserItemConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(AlignConfigError, match="unknown field"):
        UserItemConfig.from_dict({"nope": 1})
    helps = {f.name: f.metadata.get("help", "") for f in dataclasses.fields(ItemTextConfig)}
    assert all(helps[name] for name in ("items_per_instance", "lr", "head", "llm"))


def test_projector_metadata_is_saved_and_ignored_on_load(tmp_path):
    from glta_gllm.checkpoint import load_artifact

    proj = NodeProjector(4, 8)
    proj.save_pretrained(tmp_path / "p", metadata={"achieved_gflops": 1.5, "kind": "mlp"})
    _, config, _ = load_artifact(tmp_path / "p")
    assert config["achieved_gflops"] == 1.5 and config["kind"] == "linear"  # own keys win
    back = NodeProjector.from_pretrained(tmp_path / "p")
    assert torch.equal(back.linear.weight, proj.linear.weight)
