"""Cost arithmetic: exact integers, holds that always cover the settlement."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glmaas.platform.pricing import PriceSheet, cost, format_amount, hold_amount, parse_amount

prices = st.builds(PriceSheet, st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9))
counts = st.integers(0, 200_000)


@given(prices, counts, st.data())
def test_hold_covers_every_possible_settlement(price: PriceSheet, prompt: int, data) -> None:  # type: ignore[no-untyped-def]
    max_tokens = data.draw(st.integers(1, 100_000))
    cached = data.draw(st.integers(0, prompt))
    produced = data.draw(st.integers(0, max_tokens))
    assert 0 <= cost(price, prompt, cached, produced) <= hold_amount(price, prompt, max_tokens)


@given(prices, counts, counts, counts)
def test_cost_rounds_up_once_over_the_whole_request(price: PriceSheet, a: int, b: int, c: int) -> None:
    exact_numerator = a * price.input + c * price.output
    charged = cost(price, a, 0, c)
    assert charged * 1_000_000 >= exact_numerator > (charged - 1) * 1_000_000 or exact_numerator == charged == 0


def test_a_worked_price() -> None:
    # 5 per million input, 1 per million cached, 15 per million output (units of currency).
    price = PriceSheet(5_000_000, 1_000_000, 15_000_000)
    # 1000 prompt tokens of which 400 cached, 200 output: 600*5 + 400*1 + 200*15 = 6400 micro-units.
    assert cost(price, 1000, 400, 200) == 6400
    assert format_amount(6400) == "0.006400"


@given(st.integers(-10**15, 10**15))
def test_amounts_round_trip(micro: int) -> None:
    assert parse_amount(format_amount(micro)) == micro


@pytest.mark.parametrize("text", ["", "abc", "1.2345678", "1,5", "--1", "1.-5"])
def test_bad_amounts_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_amount(text)
