"""Giving back the memory llama.cpp zeroed but no sequence has used yet.

llama.cpp writes zeros over a new context's whole KV cache, so the kernel counts all of it as
resident from the start: 16 slots x 2048 cells of SmolLM2-135M are 720 MiB before the first
token. A page of private anonymous memory that holds only zeros can be handed back with
`madvise(MADV_DONTNEED)` without anyone being able to tell: the next read of it sees zeros again
(the kernel's shared zero page), and the next write gets a fresh page. So after the release a KV
region becomes resident as its cells are written, a page (about 10 cells of one layer's keys or
values) at a time, and the process holds what its sequences have used rather than slots x context.
What a sequence has written stays resident after it ends (the slot keeps it as a reusable
prefix): resident memory follows the longest sequence each slot has held, up to the full cache.

How: `anonymous_ranges()` notes the process's private anonymous address ranges before the
context is created; `release_zero_pages(before, min_bytes)` finds the ranges mapped since (the KV
cache is one allocation that malloc maps on its own, though the kernel may merge it with a
neighbouring new mapping), and in those at least `min_bytes` long gives back every resident page
that is all zeros. Pages that hold anything else are left alone, and so
are pages not resident (memory that other code has mapped but not yet written). Linux only;
elsewhere it releases nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import sys
from collections.abc import Iterator

import numpy as np

log = logging.getLogger(__name__)

PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_MADV_NOHUGEPAGE = 15  # a later write then faults in one small page, not a 2 MiB huge one
_SCAN = 32 << 20  # bytes checked, then given back, at a time

Ranges = list[tuple[int, int]]  # [start, end) address ranges, sorted


def anonymous_ranges() -> Ranges:
    """The private, writable, anonymous address ranges of this process (heap and mmap'd memory)."""
    if not sys.platform.startswith("linux"):
        return []
    ranges = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            # address perms offset dev inode [path]; anonymous memory has inode 0 and no file
            path = fields[5] if len(fields) > 5 else ""
            if fields[1] == "rw-p" and fields[4] == "0" and path in ("", "[heap]"):
                start, end = (int(a, 16) for a in fields[0].split("-"))
                ranges.append((start, end))
    return sorted(ranges)


def new_ranges(before: Ranges, after: Ranges) -> Ranges:
    """The parts of `after` not in `before` (a new mapping may have merged with an old one)."""
    out = []
    for start, end in after:
        cursor = start
        for b_start, b_end in before:
            if b_end <= cursor or b_start >= end:
                continue
            if b_start > cursor:
                out.append((cursor, b_start))
            cursor = max(cursor, b_end)
        if cursor < end:
            out.append((cursor, end))
    return out


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    return libc


def zero_page_runs(start: int, end: int, libc: ctypes.CDLL | None = None) -> Iterator[tuple[int, int]]:
    """The runs of resident, all-zero pages in [start, end) (page aligned), a scan chunk at a
    time: a run that crosses a chunk's end comes as two. A page not resident (never written, or
    given back) is skipped: nothing to give back, and a buffer just mapped by other code is not
    resident until that code writes it. The memory is read through /proc/self/mem, so a range
    that other code unmaps meanwhile is skipped rather than read out of the process's bounds."""
    libc = libc or _libc()
    buffer = bytearray(_SCAN)
    with open("/proc/self/mem", "rb", buffering=0) as memory:
        for chunk in range(start, end, _SCAN):
            n = min(_SCAN, end - chunk)
            pages = n // PAGE
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(chunk, n, vec) != 0:
                continue  # (part of) the chunk is no longer mapped
            resident = (np.frombuffer(vec, dtype=np.uint8) & 1).astype(bool)
            if not resident.any():
                continue
            try:
                memory.seek(chunk)
                if memory.readinto(memoryview(buffer)[:n]) != n:
                    continue
            except OSError:
                continue
            words = np.frombuffer(buffer, dtype=np.uint64, count=n // 8)
            zero = resident & ~words.reshape(pages, PAGE // 8).any(axis=1)
            # Where the mask flips, a run starts (even edges) or ends (odd edges).
            edges = np.flatnonzero(np.diff(np.concatenate(([False], zero, [False])).astype(np.int8)))
            for first, last in zip(edges[::2], edges[1::2], strict=True):
                yield chunk + int(first) * PAGE, chunk + int(last) * PAGE


def release_zero_pages(before: Ranges, min_bytes: int) -> int:
    """Give back the resident all-zero pages of the anonymous ranges mapped since `before` that
    are at least `min_bytes` long; returns the bytes given back (0 where the system offers no way).

    A page is checked and given back within one scan chunk's time (~10 ms): code on another
    thread that, in that window, writes a page it had itself filled with zeros could lose the
    write. The engine calls this as it creates a context, when the only such memory in the new
    ranges is the KV cache llama.cpp has just cleared."""
    if not sys.platform.startswith("linux") or min_bytes <= 0:
        return 0
    libc = _libc()
    resident = resident_anonymous_bytes()
    try:
        for start, end in new_ranges(before, anonymous_ranges()):
            if end - start < min_bytes:
                continue
            for run_start, run_end in zero_page_runs(start, end, libc):
                size = run_end - run_start
                libc.madvise(run_start, size, _MADV_NOHUGEPAGE)  # best effort: not every kernel has THP
                if libc.madvise(run_start, size, _MADV_DONTNEED) != 0:
                    log.debug("madvise(MADV_DONTNEED) failed with errno %d", ctypes.get_errno())
    except OSError as exc:  # /proc/self/mem not readable here: the cache stays resident
        log.warning("could not give back the KV cache's zero pages: %s", exc)
    return max(0, resident - resident_anonymous_bytes())


def resident_anonymous_bytes() -> int:
    """This process's resident anonymous memory (`RssAnon`), in bytes."""
    with open("/proc/self/status") as status:
        return next((int(line.split()[1]) * 1024 for line in status if line.startswith("RssAnon:")), 0)
