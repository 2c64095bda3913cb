"""Test helpers of glta-align (``tiny_llm``, a small random LLM, lives in :mod:`glta_align.llm`)."""

from __future__ import annotations

from typing import Any

__all__ = ["record_text_heads"]


def record_text_heads(monkeypatch: Any) -> list[tuple[int, ...]]:
    """Record every leading text a :class:`~glta_align.splice.SoftPromptRunner` computes
    alone (its ``_row_head``: a text whose keys/values it had not kept), for tests that
    check texts are computed once.

    Args:
        monkeypatch: pytest's ``monkeypatch`` fixture (the recording ends with the test).

    Returns:
        The list the token ids of each computed text are appended to, in call order.
    """
    from glta_align.splice import SoftPromptRunner

    computed: list[tuple[int, ...]] = []
    row_head = SoftPromptRunner._row_head

    def recording(self: SoftPromptRunner, row: list[int], kv: Any) -> Any:
        computed.append(tuple(row))
        return row_head(self, row, kv)

    monkeypatch.setattr(SoftPromptRunner, "_row_head", recording)
    return computed
