import pytest

from glta_align.prompts import (
    ITEM_TEXT_SYSTEM,
    ITEM_TEXT_TEMPLATE,
    ITEM_TEXT_USER,
    USER_ITEM_SYSTEM,
    USER_ITEM_TEMPLATE,
    USER_ITEM_USER,
    build_layout,
    tokenize_texts,
)


def test_templates_are_the_papers_verbatim():
    assert ITEM_TEXT_TEMPLATE == (
        "[INST] <<SYS>> Reorder the randomly shuffled descriptions of items in align with item "
        "tokens. <</SYS>>\nRandomly shuffled descriptions: {DESCRPTION_TOKEN}\n"
        "Item tokens: {ITEM_TOKEN} [/INST]")
    assert USER_ITEM_TEMPLATE == (
        "[INST] <<SYS>> Select items interacted by the user from given items. <</SYS>>\n"
        "User token: {USER_TOKEN}\nItem tokens: {ITEM_TOKEN}\nUser tags: {PROFILE_TOKEN}\n"
        "User's potential interest:{PREDICT_TOKEN}[/INST]")


def test_paper_layout_splits_at_placeholders(tokenizer):
    lay = build_layout(tokenizer, USER_ITEM_SYSTEM, USER_ITEM_USER, USER_ITEM_TEMPLATE,
                       style="paper")
    assert lay.style == "paper"
    assert _placeholders(lay) == ["USER_TOKEN", "ITEM_TOKEN", "PROFILE_TOKEN", "PREDICT_TOKEN"]
    prefix = tokenizer.decode(lay.prefix_ids)
    assert prefix.startswith("[INST] <<SYS>> Select items") and prefix.endswith("User token: ")
    assert tokenizer.decode(list(lay.pieces[-1])) == "[/INST]"


def test_chat_layout_uses_the_chat_template(tokenizer):
    lay = build_layout(tokenizer, ITEM_TEXT_SYSTEM, ITEM_TEXT_USER, ITEM_TEXT_TEMPLATE)
    assert lay.style == "chat"
    prefix = tokenizer.decode(lay.prefix_ids)
    assert "<|im_start|>system\nReorder the randomly shuffled" in prefix
    assert prefix.endswith("Randomly shuffled descriptions: ")
    assert _placeholders(lay) == ["DESCRPTION_TOKEN", "ITEM_TOKEN"]
    assert tokenizer.decode(list(lay.pieces[-1])).endswith("<|im_start|>assistant\n")


def test_bad_style(tokenizer):
    with pytest.raises(ValueError, match="prompt style"):
        build_layout(tokenizer, "s", "u", "x {ITEM_TOKEN}", style="llama3")


def test_tokenize_texts_truncates(tokenizer):
    out = tokenize_texts(tokenizer, ["a b c d e f g h", "x"], 3)
    assert len(out[0]) == 3 and 1 <= len(out[1]) <= 3
    with pytest.raises(ValueError, match="max_tokens"):
        tokenize_texts(tokenizer, ["a"], -1)


def _placeholders(layout):
    """The placeholder names of a layout, in order of appearance."""
    return [p for p in layout.pieces if isinstance(p, str)]
