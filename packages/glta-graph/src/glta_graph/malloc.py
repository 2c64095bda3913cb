"""Keep freed memory in the process: glibc's malloc without per-tensor ``mmap``/``munmap``.

On Linux with glibc, every CPU tensor larger than glibc's ``mmap`` threshold (at most
32 MiB) gets fresh pages from the kernel when it is allocated and hands them back when it is
freed. A transformer step over a batch of prompts allocates and frees such blocks many times
(e.g. its MLP's intermediate activations), and each time the kernel zeroes the pages again
on first touch: on a 2-core AMD EPYC the profile text of 128 ML-100K users spent
16-19 s of system time in 7-8.6 million page faults out of 60-61 s, and the default pipeline
53.5 million faults (``benchmarks/RESULTS.md``, "Freed memory kept in the process").
:func:`keep_freed_memory` turns glibc's ``mmap`` path off and raises its trim threshold, so
freed blocks stay in the heap and the next step reuses them; the results are bit-identical
(only where memory comes from changes), the peak resident memory can grow by the blocks kept
(0.1 GB in the default pipeline, 10 min 35 s -> 9 min 18 s there).

The ``glta`` command calls it at start-up; ``GLTA_MALLOC=system`` keeps glibc's defaults.
A library user can call it once at the start of their own process. Elsewhere (macOS,
Windows, musl) it does nothing and says why.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from dataclasses import dataclass

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
ENV = "GLTA_MALLOC"
DEFAULT_TRIM_THRESHOLD = 1 << 30


@dataclass(frozen=True)
class MallocSetting:
    """What :func:`keep_freed_memory` did.

    Attributes:
        applied: whether glibc's settings were changed.
        detail: one line for logs and reports (what was set, or why nothing was).
    """

    applied: bool
    detail: str


_last: MallocSetting | None = None


def last_setting() -> MallocSetting | None:
    """The result of this process's latest :func:`keep_freed_memory` call (None: never
    called)."""
    return _last


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory(trim_threshold: int = DEFAULT_TRIM_THRESHOLD, *,
                      env: dict[str, str] | None = None) -> MallocSetting:
    """Make glibc's malloc keep large freed blocks for reuse instead of unmapping them.

    Sets ``M_MMAP_MAX = 0`` (every block comes from the heap, none from its own ``mmap``)
    and ``M_TRIM_THRESHOLD = trim_threshold`` (the heap's free top is returned to the kernel
    only beyond that many bytes). Applies to allocations made after the call, process-wide;
    call it once, early. Results of any computation are unchanged.

    Args:
        trim_threshold: bytes of free heap top kept before trimming (>= 0; default 1 GiB).
        env: the environment to read ``GLTA_MALLOC`` from (default ``os.environ``);
            ``GLTA_MALLOC=system`` leaves glibc's defaults.

    Returns:
        A :class:`MallocSetting` (also kept for :func:`last_setting`).

    Raises:
        ValueError: ``trim_threshold`` is negative or above 2**31 - 1 (glibc takes an int),
            or ``GLTA_MALLOC`` is neither ``keep`` nor ``system``.
    """
    global _last
    if not 0 <= int(trim_threshold) <= 2**31 - 1:
        raise ValueError(f"trim_threshold = {trim_threshold}: expected 0 .. 2**31 - 1 bytes")
    mode = (os.environ if env is None else env).get(ENV, "keep").strip().lower() or "keep"
    if mode not in ("keep", "system"):
        raise ValueError(f"{ENV}={mode!r}: expected 'keep' (the default) or 'system'")
    if mode == "system":
        _last = MallocSetting(False, f"glibc malloc defaults ({ENV}=system)")
    elif not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        _last = MallocSetting(False, f"malloc defaults (not glibc: {sys.platform} "
                                     f"{platform.libc_ver()[0] or 'unknown libc'})")
    elif (libc := _libc()) is None:
        _last = MallocSetting(False, "malloc defaults (mallopt not found in the C library)")
    elif libc.mallopt(_M_MMAP_MAX, 0) != 1 or libc.mallopt(_M_TRIM_THRESHOLD,
                                                           int(trim_threshold)) != 1:
        _last = MallocSetting(False, "malloc defaults (glibc refused mallopt)")
    else:
        mib = int(trim_threshold) / 2**20
        _last = MallocSetting(True, f"glibc malloc keeps freed blocks (mmap off, trim above "
                                    f"{mib:g} MiB; {ENV}=system for the defaults)")
    return _last
