"""`PrepareConfig`: how raw interactions become a prepared, split dataset."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from glta_graph.data.interactions import DatasetError

__all__ = ["SPLIT_METHODS", "TEMPORAL_SCOPES", "PrepareConfig"]

SPLIT_METHODS = ("random", "loo", "temporal")
TEMPORAL_SCOPES = ("global", "user")


@dataclass
class PrepareConfig:
    """Preprocessing of a loaded source: threshold, k-core, split. All randomness is seeded.

    The order is: drop rows with rating below ``threshold``; collapse duplicate
    (user, item) pairs (keeping the earliest); iterative k-core; split; drop users and items
    left without any interaction. ``help`` metadata on each field feeds the CLI.
    """

    threshold: float | None = field(default=None, metadata={"help": (
        "Implicit-feedback threshold: keep interactions with rating >= threshold "
        "(None keeps all; an error when the source has no ratings).")})
    k_core: int = field(default=0, metadata={"help": (
        "Iterative k-core: repeatedly drop users and items with fewer than k interactions "
        "(0 or 1 = off).")})
    user_core: int | None = field(default=None, metadata={"help": (
        "Minimum interactions per user for the k-core (None = k_core).")})
    item_core: int | None = field(default=None, metadata={"help": (
        "Minimum interactions per item for the k-core (None = k_core).")})
    split: str = field(default="random", metadata={"help": (
        "How to split: 'random' (per user, by ratios), 'loo' (leave-one-out: last item by "
        "time, or a random one without timestamps, to test; the one before to valid), "
        "'temporal' (by time, see temporal_scope). Sources with a fixed split (LightGCN "
        "format) keep their test split.")})
    ratios: tuple[float, float, float] = field(default=(0.7, 0.1, 0.2), metadata={"help": (
        "train/valid/test fractions (sum 1; a '0.8,0.1,0.1' string works too) for 'random' "
        "and 'temporal'; for 'loo' a "
        "valid item is held out only when the valid fraction is > 0.")})
    temporal_scope: str = field(default="global", metadata={"help": (
        "'global': one time cut over all interactions; 'user': each user's latest "
        "interactions go to valid/test.")})
    presplit_valid_ratio: float = field(default=0.1, metadata={"help": (
        "For sources with a fixed train/test split: fraction of each user's train items "
        "moved to valid (seeded, rounded; >= 1 for users with >= 3 train items; every user "
        "keeps >= 1 train item). 0 = no valid split.")})
    seed: int = field(default=0, metadata={"help": "Seed of the numpy Generator for splits."})
    with_title: bool = field(default=True, metadata={"help": (
        "Put item titles into item text (MovieLens: 'Title (year). Genres: A, B' vs "
        "'Genres: A, B'; Amazon/Goodreads: title + description vs description).")})
    name: str | None = field(default=None, metadata={"help": (
        "Dataset name stored with the prepared data (None = from the source).")})

    def __post_init__(self) -> None:
        if self.threshold is not None:
            if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float):
                raise DatasetError(f"PrepareConfig.threshold={self.threshold!r}: not a number")
            if not math.isfinite(self.threshold):
                raise DatasetError(f"PrepareConfig.threshold={self.threshold!r}: must be finite")
            self.threshold = float(self.threshold)
        for name in ("k_core", "user_core", "item_core", "seed"):
            value = getattr(self, name)
            if value is None and name in ("user_core", "item_core"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DatasetError(
                    f"PrepareConfig.{name}={value!r}: must be a non-negative integer"
                )
        if self.split not in SPLIT_METHODS:
            raise DatasetError(
                f"PrepareConfig.split={self.split!r}: expected one of {', '.join(SPLIT_METHODS)}"
            )
        if self.temporal_scope not in TEMPORAL_SCOPES:
            raise DatasetError(
                f"PrepareConfig.temporal_scope={self.temporal_scope!r}: expected one of "
                f"{', '.join(TEMPORAL_SCOPES)}"
            )
        raw_ratios = self.ratios
        if isinstance(raw_ratios, str):  # "0.8,0.1,0.1" from a command line
            raw_ratios = [r for r in raw_ratios.replace(" ", "").split(",") if r]
        try:
            ratios = tuple(float(r) for r in raw_ratios)
        except (TypeError, ValueError):
            raise DatasetError(f"PrepareConfig.ratios={self.ratios!r}: not numbers") from None
        if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
            raise DatasetError(
                f"PrepareConfig.ratios={self.ratios!r}: need three non-negative fractions "
                f"(train, valid, test)"
            )
        if abs(sum(ratios) - 1.0) > 1e-6:
            raise DatasetError(f"PrepareConfig.ratios={self.ratios!r}: must sum to 1")
        if ratios[0] <= 0 or ratios[2] <= 0:
            raise DatasetError(
                f"PrepareConfig.ratios={self.ratios!r}: train and test fractions must be > 0"
            )
        self.ratios = ratios
        if not 0.0 <= float(self.presplit_valid_ratio) < 1.0:
            raise DatasetError(
                f"PrepareConfig.presplit_valid_ratio={self.presplit_valid_ratio!r}: "
                f"must be in [0, 1)"
            )
        self.presplit_valid_ratio = float(self.presplit_valid_ratio)

    @property
    def min_user_interactions(self) -> int:
        """Effective k-core bound for users."""
        return self.k_core if self.user_core is None else self.user_core

    @property
    def min_item_interactions(self) -> int:
        """Effective k-core bound for items."""
        return self.k_core if self.item_core is None else self.item_core

    def to_dict(self) -> dict[str, Any]:
        """JSON/TOML-ready dict of every field (``ratios`` as a list)."""
        out = asdict(self)
        out["ratios"] = list(self.ratios)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PrepareConfig:
        """Build from a dict, rejecting unknown keys with a message listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DatasetError(
                f"PrepareConfig: unknown field(s) {', '.join(unknown)}; known: "
                f"{', '.join(sorted(known))}"
            )
        return cls(**values)
