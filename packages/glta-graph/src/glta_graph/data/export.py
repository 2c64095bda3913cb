"""`export_csv`: write a prepared dataset's splits as CSV with the original ids."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from glta_graph.data.interactions import SPLITS, Interactions

__all__ = ["export_csv"]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def export_csv(data: Interactions, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write ``train.csv``, ``valid.csv``, ``test.csv`` (columns ``user,item``, original ids).

    Every file is written to a temporary name and renamed into place, so a reader never
    sees a half-written file. Rows are sorted by internal user, then item index.

    Args:
        data: the prepared dataset.
        out_dir: the folder to write into (created if needed).

    Returns:
        split name -> path of its CSV file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for split in SPLITS:
        users, items = data.pairs(split)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(("user", "item"))
        uid, iid = data.user_ids, data.item_ids
        writer.writerows((uid[u], iid[i]) for u, i in zip(users.tolist(), items.tolist(),
                                                           strict=True))
        path = out / f"{split}.csv"
        _atomic_write(path, buf.getvalue())
        written[split] = path
    return written
