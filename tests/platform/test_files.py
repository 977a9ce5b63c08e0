"""Checking uploads line by line, and the batch discount's arithmetic."""

from __future__ import annotations

import json

import pytest

from glmaas.platform.files import InvalidFile, parse_jsonl
from glmaas.platform.pricing import PriceSheet, discounted


def line(**record) -> str:  # type: ignore[no-untyped-def]
    return json.dumps(record)


def test_batch_lines_are_checked_with_their_numbers() -> None:
    ok = line(custom_id="a", method="POST", url="/v1/chat/completions", body={"model": "m"})
    text = "\n".join([ok, "", "[1, 2]", line(custom_id="a", url="/v1/chat/completions", body={}),
                      line(custom_id="b", method="GET", url="/x", body={})])
    with pytest.raises(InvalidFile) as caught:
        parse_jsonl(text.encode(), "batch")
    message = str(caught.value)
    assert "line 3: not a JSON object" in message
    assert "line 4: custom_id 'a' is used twice" in message
    assert "line 5: method must be POST" in message


def test_blank_lines_are_skipped_and_an_empty_file_refused() -> None:
    ok = line(custom_id="a", url="/v1/chat/completions", body={"model": "m"})
    assert len(parse_jsonl(f"\n{ok}\n\n".encode(), "batch")) == 1
    with pytest.raises(InvalidFile, match="no lines"):
        parse_jsonl(b"\n\n", "batch")
    with pytest.raises(InvalidFile, match="UTF-8"):
        parse_jsonl(b"\xff\xfe", "batch")


def test_fine_tune_lines_need_messages() -> None:
    assert parse_jsonl(line(messages=[{"role": "user", "content": "x"}]).encode(), "fine-tune")
    with pytest.raises(InvalidFile, match="line 1: messages"):
        parse_jsonl(line(prompt="x").encode(), "fine-tune")


def test_many_bad_lines_are_summarised() -> None:
    with pytest.raises(InvalidFile, match=r"and 7 more"):
        parse_jsonl(b"x\n" * 12, "batch")


def test_discount_rounds_down_and_never_exceeds_the_price() -> None:
    price = PriceSheet(input=3, cached_input=1, output=11)
    assert discounted(price, 50) == PriceSheet(1, 0, 5)
    assert discounted(price, 100) is price
    with pytest.raises(ValueError):
        discounted(price, 101)
