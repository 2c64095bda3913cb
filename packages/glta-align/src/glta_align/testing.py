"""Test helpers of glta-align (``tiny_llm``, a small random LLM, lives in :mod:`glta_align.llm`)."""

from __future__ import annotations

from typing import Any

__all__ = ["record_text_heads"]


def record_text_heads(monkeypatch: Any) -> list[tuple[int, ...]]:
    """Record every leading text a :class:`~glta_align.splice.SoftPromptRunner` computes
    for its text-head cache (its ``_rows_head``: texts whose keys/values it had not kept),
    for tests that check texts are computed once.

    Args:
        monkeypatch: pytest's ``monkeypatch`` fixture (the recording ends with the test).

    Returns:
        The list the token ids of each computed text are appended to, in call order.
    """
    from glta_align.splice import SoftPromptRunner

    computed: list[tuple[int, ...]] = []
    rows_head = SoftPromptRunner._rows_head

    def recording(self: SoftPromptRunner, rows: list[list[int]], kv: Any) -> Any:
        computed.extend(tuple(r) for r in rows)
        return rows_head(self, rows, kv)

    monkeypatch.setattr(SoftPromptRunner, "_rows_head", recording)
    return computed
