"""Fusion alternatives for a bf16 stage-3 step of the frozen LLM, timed side by side.

How a bf16 stage-3 training pass of the frozen LLM is split between compiled and eager
code (:mod:`glta_align.pointwise`), timed in one process on one model, the variants
interleaved round by round so that machine load hits them alike:

- ``eager``: transformers' code (``[llm] pointwise = "eager"``);
- ``elementwise``: three small compiled graphs (RMSNorm, SiLU x up, rotary) shared by every
  layer, the rest eager (``[llm] pointwise = "compiled"`` until 2026-12-07);
- ``regions``: ``[llm] pointwise = "compiled"`` (the default in bf16 on the CPU): each
  decoder layer as two compiled regions, :func:`glta_align.pointwise.layer_in` (RMSNorm,
  q/k/v, rotary) and :func:`glta_align.pointwise.layer_out` (attention, o_proj, residual,
  RMSNorm, gated MLP, residual), the key/value cache update eager between them;
- ``fused-projections``: ``elementwise`` plus one product for q, k and v and one for gate
  and up (weights concatenated: fewer, wider GEMMs, no gradient sums between them).

The step: forward + backward into ``inputs_embeds`` of ``--batch`` x ``--tokens`` trained
positions behind a key/value cache of ``--prefix`` positions (stage 3 with the profile text
first: the instruction prefix and the text run without gradient, the history and slot
tokens train), the loss on the last ``--slots`` positions, all of it real text (``--text``
repeated; the prefix's keys/values computed by the model). Fidelity against ``eager``:
cosine of the last hidden states and of the input gradient.

    uv run python benchmarks/align/fusion_probe.py --json /tmp/fusion.json

``fused-projections`` is not in glta; it is measured here only.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F
from profile_gen import cpu_model, git_commit, write_result  # this folder's benchmark helpers

_TEXT = ("You are a movie recommender. The user has watched Star Wars, Toy Story, Fargo and "
         "The Godfather. They enjoy science fiction, crime and animated comedy, and tend to "
         "rate older classics highly. Recommend movies this user will watch next.")
VARIANTS = ("eager", "elementwise", "regions", "fused-projections")


def _install(llm, state: dict[str, str]) -> None:
    """Swap every decoder layer's class for one that runs ``state["variant"]`` in passes
    that record gradients (glta's installed code otherwise)."""
    import transformers.models.llama.modeling_llama as ml
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    def silu_mul_halves(gu: torch.Tensor) -> torch.Tensor:
        f = gu.shape[-1] // 2
        return F.silu(gu[:, :f]) * gu[:, f:]

    halves = torch.compile(silu_mul_halves, dynamic=True)
    backbone = llm.backbone
    base = type(backbone.layers[0])
    for layer in backbone.layers:
        a, m = layer.self_attn, layer.mlp
        layer._split = (a.q_proj.weight.shape[0], a.k_proj.weight.shape[0])
        layer._qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).contiguous()
        layer._gu = torch.cat([m.gate_proj.weight, m.up_proj.weight]).contiguous()
        layer._regions = layer._glta_attention

    def projections(self, x, attention_mask, cache, position_embeddings):
        a, m = self.self_attn, self.mlp
        h = self.input_layernorm(x)
        nq, nk = self._split
        q, k, v = F.linear(h, self._qkv).split([nq, nk, nk], dim=-1)
        shape = (*x.shape[:-1], -1, a.head_dim)
        q, k, v = (t.reshape(shape).transpose(1, 2) for t in (q, k, v))
        q, k = ml.apply_rotary_pos_emb(q, k, *position_embeddings)
        if cache is not None:
            k, v = cache.update(k, v, a.layer_idx)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(a.config._attn_implementation,
                                                       ml.eager_attention_forward)
        o, _ = attend(a, q, k, v, attention_mask, dropout=0.0, scaling=a.scaling)
        s = x + a.o_proj(o.reshape(*x.shape[:-1], -1).contiguous())
        g = F.linear(self.post_attention_layernorm(s), self._gu)
        rows = g.numel() // g.shape[-1]
        return s + m.down_proj(halves(g.view(rows, -1)).view(*g.shape[:-1], -1))

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None,
                use_cache=False, position_embeddings=None, **kwargs):
        variant = state["variant"]
        if variant == "fused-projections" and torch.is_grad_enabled():
            return projections(self, hidden_states, attention_mask, cache,
                               position_embeddings)
        # glta's code: regions only for "regions" (another name turns their check off)
        self._glta_attention = self._regions if variant == "regions" else ("off", None)
        return base.forward(self, hidden_states, attention_mask=attention_mask,
                            position_ids=position_ids, cache=cache, use_cache=use_cache,
                            position_embeddings=position_embeddings, **kwargs)

    swapped = type(f"Probe{base.__name__}", (base,), {"forward": forward})
    for layer in backbone.layers:
        layer.__class__ = swapped


def _inductor_settings(ap: argparse.ArgumentParser, pairs: list[str]) -> dict[str, object]:
    """Apply ``KEY=VALUE`` pairs to ``torch._inductor.config`` (dotted keys reach its
    sub-configs, e.g. ``cpp.simdlen=256``); returns what was set, parsed."""
    import torch._inductor.config as config

    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep:
            ap.error(f"--inductor {pair!r}: expected KEY=VALUE")
        value: object = {"true": True, "false": False}.get(raw.lower(), raw)
        if isinstance(value, str) and value.lstrip("-").isdigit():
            value = int(value)
        owner, _, leaf = key.rpartition(".")
        target = config
        for part in filter(None, owner.split(".")):
            target = getattr(target, part, None)
        if target is None or not hasattr(target, leaf):
            ap.error(f"--inductor {pair!r}: torch._inductor.config has no {key!r}")
        setattr(target, leaf, value)
        out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=32, help="users per step (the default's 32)")
    ap.add_argument("--tokens", type=int, default=27, help="trained positions per user")
    ap.add_argument("--prefix", type=int, default=128,
                    help="cached positions before them (instruction prefix + profile text)")
    ap.add_argument("--slots", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--text", default=_TEXT, help="source of the prefix and trained tokens")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--inductor", action="append", default=[], metavar="KEY=VALUE",
                    help="set torch._inductor.config KEY before compiling (repeatable; "
                         "true/false/integers parsed), e.g. max_autotune_gemm=true")
    args = ap.parse_args()
    settings = _inductor_settings(ap, args.inductor)
    names = args.variants.split(",")
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown or names[0] != "eager":
        ap.error(f"--variants: from {VARIANTS}, 'eager' first (the reference); got {names}")
    from glta_align.llm import load_llm
    from transformers import DynamicCache

    torch.manual_seed(0)
    llm = load_llm(dtype="bfloat16", pointwise="compiled")
    if not llm.pointwise:
        sys.exit("fusion_probe: torch.compile is unavailable here (see the warning above)")
    if getattr(type(llm.backbone.layers[0]), "_glta_kind", None) != "decoder_layer":
        sys.exit("fusion_probe: the decoder layers were not compiled (see the warnings)")
    state = {"variant": "eager"}
    _install(llm, state)
    B, T, P = args.batch, args.tokens, args.prefix
    # real text throughout: on random keys/values the 30 layers amplify any rounding change
    # until eager bf16 and the same ops reordered no longer agree, so fidelity needs text
    words = args.text.split()
    ids = llm.tokenizer(" ".join(words * (1 + 4 * (P + T) // len(words))),
                        return_tensors="pt").input_ids[0]
    if ids.numel() < P + T:
        ap.error(f"--text gives {ids.numel()} tokens, fewer than --prefix + --tokens")
    with torch.no_grad():
        x = llm.embed(torch.stack([ids[P + b % 7: P + b % 7 + T] for b in range(B)])).float()
        prefix = DynamicCache()
        if P:
            llm.backbone(input_ids=ids[None, :P], use_cache=True, cache=prefix)
    kv = [(layer.keys, layer.values) for layer in prefix.layers] if P else []
    mask = torch.ones(B, P + T, dtype=torch.long)
    pos = (torch.arange(T) + P)[None].expand(B, -1)

    def step() -> tuple[torch.Tensor, torch.Tensor]:
        xe = x.to(llm.dtype).clone().requires_grad_()
        cache = DynamicCache(ddp_cache_data=[(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1))
                                             for k, v in kv]) if P else None
        with llm.attention_scope():
            out = llm.backbone(inputs_embeds=xe, attention_mask=mask if P else None,
                               position_ids=pos, use_cache=cache is not None,
                               cache=cache).last_hidden_state
        out[:, -args.slots:].float().sum().backward()
        return out.detach().float(), xe.grad.float()

    def use(name: str) -> None:
        state["variant"] = name
        llm.pointwise = name != "eager"

    outputs, first = {}, {}
    for name in names:  # compile, warm up, keep the outputs for fidelity
        use(name)
        t0 = time.perf_counter()
        outputs[name] = step()
        first[name] = time.perf_counter() - t0
        step()
    times: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(args.rounds):
        for name in names:
            use(name)
            t0 = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t0)
    h_ref, g_ref = outputs["eager"]
    ref = sorted(times["eager"])[len(times["eager"]) // 2]
    results = {}
    for name in names:
        t = sorted(times[name])
        h, g = outputs[name]
        results[name] = {
            "first_step_s": first[name], "best_s": t[0], "median_s": t[len(t) // 2],
            "speedup_median_vs_eager": ref / t[len(t) // 2],
            "hidden_cos_min": float(F.cosine_similarity(h, h_ref, dim=-1).min()),
            "input_grad_cos": float(F.cosine_similarity(g.flatten(), g_ref.flatten(), dim=0)),
        }
    out = {"command": "python benchmarks/align/fusion_probe.py " + " ".join(sys.argv[1:]),
           "commit": git_commit(), "cpu": cpu_model(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"),
           "train_attention": llm.train_attention, "batch": B, "tokens": T, "prefix": P,
           "rounds": args.rounds, "inductor": settings, "results": results}
    write_result(out, args.json)


if __name__ == "__main__":
    main()
