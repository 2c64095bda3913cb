"""The paper's two instruction templates, rendered to token pieces with named placeholders.

A template is rendered once per tokenizer into a :class:`PromptLayout`: the shared prefix
(token ids up to the first placeholder, identical for every sample, so its key/value cache can
be computed once) and the rest as a sequence of token-id chunks and placeholder names. Each
sample then fills the placeholders with either soft tokens or text token ids.

Styles: ``"paper"`` is the Llama-2 ``[INST] <<SYS>>`` text exactly as printed in the paper
(typo ``DESCRPTION`` included); ``"chat"`` sends the same system and user text through the
tokenizer's own chat template (SmolLM2 has one) with the generation prompt appended;
``"auto"`` picks ``"chat"`` when the tokenizer has a chat template [choice].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ITEM_TEXT_SYSTEM",
    "ITEM_TEXT_TEMPLATE",
    "ITEM_TEXT_USER",
    "PREDICT_PROMPT",
    "PREDICT_SHARED",
    "PROFILE_PROMPT",
    "PROFILE_SHARED",
    "PROFILE_SHARED_CONTEXT",
    "PROMPT_STYLES",
    "USER_ITEM_SYSTEM",
    "USER_ITEM_TEMPLATE",
    "USER_ITEM_TEMPLATE_TEXT_FIRST",
    "USER_ITEM_TEMPLATE_TEXT_FIRST_HISTORY",
    "USER_ITEM_USER",
    "USER_ITEM_USER_TEXT_FIRST",
    "USER_ITEM_USER_TEXT_FIRST_HISTORY",
    "PromptLayout",
    "build_layout",
    "tokenize_texts",
]

PROMPT_STYLES = ("auto", "chat", "paper")

#: Stage 2, verbatim from the paper (Llama-2 chat style; the typo is the paper's).
ITEM_TEXT_TEMPLATE = (
    "[INST] <<SYS>> Reorder the randomly shuffled descriptions of items in align with item "
    "tokens. <</SYS>>\nRandomly shuffled descriptions: {DESCRPTION_TOKEN}\n"
    "Item tokens: {ITEM_TOKEN} [/INST]"
)
ITEM_TEXT_SYSTEM = "Reorder the randomly shuffled descriptions of items in align with item tokens."
ITEM_TEXT_USER = "Randomly shuffled descriptions: {DESCRPTION_TOKEN}\nItem tokens: {ITEM_TOKEN}"

#: Stage 3, verbatim from the paper.
USER_ITEM_TEMPLATE = (
    "[INST] <<SYS>> Select items interacted by the user from given items. <</SYS>>\n"
    "User token: {USER_TOKEN}\nItem tokens: {ITEM_TOKEN}\nUser tags: {PROFILE_TOKEN}\n"
    "User's potential interest:{PREDICT_TOKEN}[/INST]"
)
USER_ITEM_SYSTEM = "Select items interacted by the user from given items."
USER_ITEM_USER = (
    "User token: {USER_TOKEN}\nItem tokens: {ITEM_TOKEN}\nUser tags: {PROFILE_TOKEN}\n"
    "User's potential interest:{PREDICT_TOKEN}"
)

#: Stage 3 with the same lines reordered, the text first [choice] (``prompt_order =
#: "text-first"``): everything before the user token is then fixed per user.
USER_ITEM_TEMPLATE_TEXT_FIRST = (
    "[INST] <<SYS>> Select items interacted by the user from given items. <</SYS>>\n"
    "User tags: {PROFILE_TOKEN}\nUser's potential interest:{PREDICT_TOKEN}\n"
    "User token: {USER_TOKEN}\nItem tokens: {ITEM_TOKEN}[/INST]"
)
USER_ITEM_USER_TEXT_FIRST = (
    "User tags: {PROFILE_TOKEN}\nUser's potential interest:{PREDICT_TOKEN}\n"
    "User token: {USER_TOKEN}\nItem tokens: {ITEM_TOKEN}"
)
#: The text-first template with a line of the user's item descriptions before the user token
#: [choice] (``history_text_first``).
USER_ITEM_TEMPLATE_TEXT_FIRST_HISTORY, USER_ITEM_USER_TEXT_FIRST_HISTORY = (
    t.replace("User token:", "User's items:{HISTORY_TOKEN}\nUser token:", 1)
    for t in (USER_ITEM_TEMPLATE_TEXT_FIRST, USER_ITEM_USER_TEXT_FIRST))
#: Profile and prediction prompts (``{k}`` tags / words, ``{descriptions}`` joined by "; ").
PROFILE_PROMPT = (
    "Use {k} tags to summarize descriptions of the user's interacted items as user profile: "
    "{descriptions}"
)
PREDICT_PROMPT = (
    "Use {k} words to predict the user's interests based on descriptions of items "
    "interacted: {descriptions}"
)
#: The same two requests with the descriptions first [choice] (``profile_prompt =
#: "shared"``): ``PROFILE_SHARED_CONTEXT`` then a new line and one of the two instructions, so
#: a user's descriptions run once and both texts continue from their keys/values.
PROFILE_SHARED_CONTEXT = "Descriptions of the user's interacted items: {descriptions}"
PROFILE_SHARED = (
    "Use {k} tags to summarize the descriptions of the user's interacted items above as "
    "user profile."
)
PREDICT_SHARED = (
    "Use {k} words to predict the user's interests based on the descriptions of items "
    "interacted above."
)

_MARK = "\u2063GLTA{}\u2063"  # invisible separator: never produced by real item text


@dataclass(frozen=True)
class PromptLayout:
    """A template rendered for one tokenizer.

    Attributes:
        prefix_ids: token ids before the first placeholder (shared by every sample).
        pieces: the rest, in order: a tuple of token ids (fixed text) or a placeholder name
            such as ``"ITEM_TOKEN"``.
        style: ``"chat"`` or ``"paper"``.
    """

    prefix_ids: tuple[int, ...]
    pieces: tuple[tuple[int, ...] | str, ...]
    style: str


def _resolve_style(tokenizer: Any, style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {PROMPT_STYLES}, got {style!r}")
    if style == "auto":
        return "chat" if getattr(tokenizer, "chat_template", None) else "paper"
    if style == "chat" and not getattr(tokenizer, "chat_template", None):
        raise ValueError("prompt style 'chat' needs a tokenizer with a chat_template")
    return style


def render_text(tokenizer: Any, system: str, user: str, paper: str, style: str) -> str:
    """Render the full prompt text (placeholders left as ``{NAME}``) in the chosen style."""
    style = _resolve_style(tokenizer, style)
    if style == "paper":
        return paper
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_layout(
    tokenizer: Any, system: str, user: str, paper: str, *, style: str = "auto"
) -> PromptLayout:
    """Render a template and split it into the shared prefix and the pieces after it.

    Args:
        tokenizer: a Hugging Face tokenizer.
        system: the system text (chat style).
        user: the user text with ``{NAME}`` placeholders (chat style).
        paper: the paper's full template with the same placeholders (paper style).
        style: ``"auto" | "chat" | "paper"``.

    Returns:
        The :class:`PromptLayout`; text pieces are tokenised without special tokens added
        (special tokens written in the text, e.g. ``<|im_start|>``, are recognised).
    """
    resolved = _resolve_style(tokenizer, style)
    names = ["DESCRPTION_TOKEN", "ITEM_TOKEN", "USER_TOKEN", "PROFILE_TOKEN", "PREDICT_TOKEN",
             "HISTORY_TOKEN"]
    marked = {n: _MARK.format(n) for n in names}
    if resolved == "paper":
        text = paper.format(**marked)
    else:
        text = render_text(tokenizer, system, user.format(**marked), paper, resolved)
    parts: list[tuple[int, ...] | str] = []
    rest = text
    while True:
        hits = [(rest.find(m), n) for n, m in marked.items() if m in rest]
        if not hits:
            if rest:
                parts.append(tuple(_ids(tokenizer, rest)))
            break
        pos, name = min(hits)
        if pos > 0:
            parts.append(tuple(_ids(tokenizer, rest[:pos])))
        parts.append(name)
        rest = rest[pos + len(marked[name]) :]
    if not parts or isinstance(parts[0], str):
        raise ValueError("a template must start with fixed text before its first placeholder")
    return PromptLayout(prefix_ids=parts[0], pieces=tuple(parts[1:]), style=resolved)


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def tokenize_texts(tokenizer: Any, texts: list[str], max_tokens: int) -> list[list[int]]:
    """Tokenise texts (no special tokens) and truncate each to ``max_tokens`` ids.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: one string per item / user.
        max_tokens: the token budget per text (>= 0).

    Returns:
        One list of token ids per text, each at most ``max_tokens`` long.
    """
    if max_tokens < 0:
        raise ValueError(f"max_tokens must be >= 0, got {max_tokens}")
    if not texts:
        return []
    enc = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(ids[:max_tokens]) for ids in enc]
