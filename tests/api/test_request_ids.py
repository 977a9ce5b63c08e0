"""The ids glmaas gives requests that bring none: `<yyyymmddHHMMSS><16 hex>`, the UTC second they
were made in, then random digits that no two ids share, also when threads make them at once."""

from __future__ import annotations

import re
import sys
import threading
import time

from glmaas.api.requests import new_request_id

SHAPE = re.compile(r"\d{14}[0-9a-f]{16}")


def test_an_id_names_its_utc_second_then_random_digits() -> None:
    before = time.time()
    made = new_request_id()
    after = time.time()
    assert SHAPE.fullmatch(made)
    seconds = {time.strftime("%Y%m%d%H%M%S", time.gmtime(t)) for t in (before, after)}
    assert made[:14] in seconds


def test_no_two_ids_share_their_random_digits_across_threads() -> None:
    # 8 threads x 1,000 ids: the randomness is read 16 times over (512 ids a read), with the
    # threads switching as often as the interpreter lets them; every id's digits are its own.
    made: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def make(into: list[str]) -> None:
        start.wait()
        into.extend(new_request_id() for _ in range(1000))

    threads = [threading.Thread(target=make, args=(ids,)) for ids in made]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads take turns between almost any two bytecodes
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    digits = [i[14:] for ids in made for i in ids]
    assert len(digits) == 8000 and len(set(digits)) == 8000
    assert all(SHAPE.fullmatch(i) for ids in made for i in ids)
