"""Giving back zero pages: only pages that hold nothing but zeros leave the process, what any
other page holds is untouched, and a released page reads zeros and takes writes as before."""

from __future__ import annotations

import ctypes
import mmap

import numpy as np
import pytest

from glmaas.engines import zero_pages
from glmaas.engines.zero_pages import PAGE, anonymous_ranges, new_ranges, release_zero_pages, zero_page_runs

pytestmark = pytest.mark.skipif(not zero_pages.sys.platform.startswith("linux"), reason="reads /proc/self")


def _private(size: int) -> mmap.mmap:
    """Private anonymous memory, as malloc maps a large allocation."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


def _address(buf: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))


def test_new_ranges_are_what_was_mapped_since_also_when_merged_with_an_old_mapping() -> None:
    before = [(0x1000, 0x3000), (0x8000, 0x9000)]
    after = [(0x0000, 0x3000), (0x5000, 0x6000), (0x8000, 0xB000)]  # grew below, new, grew above
    assert new_ranges(before, after) == [(0x0000, 0x1000), (0x5000, 0x6000), (0x9000, 0xB000)]
    assert new_ranges(after, after) == []


def _merged(runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for start, end in runs:
        if out and out[-1][1] == start:
            start = out.pop()[0]
        out.append((start, end))
    return out


def test_zero_page_runs_find_the_resident_zero_pages_also_across_scan_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(zero_pages, "_SCAN", 4 * PAGE)  # runs that straddle the chunks checked at a time
    buf = _private(16 * PAGE)
    for page in range(12):
        buf[page * PAGE] = 0  # written: resident, and still all zeros
    for page in (0, 5, 6, 11):
        buf[page * PAGE + 100] = 1
    start = _address(buf)
    runs = [((a - start) // PAGE, (b - start) // PAGE) for a, b in zero_page_runs(start, start + 16 * PAGE)]
    # Pages 12-15 were never written: not resident, so not reported (nothing to give back).
    assert _merged(runs) == [(1, 5), (7, 11)]
    buf.close()


def test_released_pages_leave_the_process_and_the_rest_keeps_its_bytes() -> None:
    pages = 4096  # 16 MiB
    before = anonymous_ranges()
    buf = _private(pages * PAGE)
    start = _address(buf)
    data = np.frombuffer(buf, dtype=np.uint8)
    data[:] = 0  # written, so resident, as llama.cpp's clearing of a new KV cache leaves it
    kept = np.arange(0, pages, 7)  # every 7th page holds data
    data[kept * PAGE + 5] = 42
    assert any(s <= start < e for s, e in new_ranges(before, anonymous_ranges()))

    released = release_zero_pages(before, pages * PAGE)

    zero = pages - len(kept)
    assert 0.9 * zero * PAGE <= released <= (zero + 16) * PAGE
    assert np.all(data[kept * PAGE + 5] == 42) and int(data.sum(dtype=np.int64)) == 42 * len(kept)
    data[3 * PAGE] = 9  # a released page takes writes like any other
    assert data[3 * PAGE] == 9
    del data
    buf.close()


def test_ranges_smaller_than_asked_are_left_resident() -> None:
    before = anonymous_ranges()
    buf = _private(256 * PAGE)
    np.frombuffer(buf, dtype=np.uint8)[:] = 0
    assert release_zero_pages(before, 1 << 40) == 0
    buf.close()


def test_memory_unmapped_before_it_is_read_is_skipped_not_read() -> None:
    buf = _private(8 * PAGE)
    for page in range(8):
        buf[page * PAGE] = 0
    start = _address(buf)
    runs = zero_page_runs(start, start + 8 * PAGE)
    buf.close()  # unmapped: reading it in place would crash the process
    assert list(runs) == []
