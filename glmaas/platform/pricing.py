"""Prices and the arithmetic of cost. Pure functions over integers: no floats touch money.

Prices are integer micro-units (of the deployment's currency, CNY by default) per million tokens.
A cost is rounded up to a whole micro-unit once, over the whole request.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from glmaas.store.tables import Price

PER = 1_000_000
MICRO = 1_000_000  # micro-units in one unit of currency


@dataclass(frozen=True)
class PriceSheet:
    input: int
    cached_input: int
    output: int
    # Per million tokens trained in a fine-tuning job (each epoch counts its tokens again).
    training: int = 0

    def __post_init__(self) -> None:
        if min(self.input, self.cached_input, self.output, self.training) < 0:
            raise ValueError("prices cannot be negative")

    @property
    def free(self) -> bool:
        return self.input == self.cached_input == self.output == 0


FREE = PriceSheet(0, 0, 0)


def discounted(price: PriceSheet, percent: int) -> PriceSheet:
    """`price` at `percent` of itself (batch work sells at a discount), rounded down per million
    tokens so a discount never costs more than it says."""
    if not 0 <= percent <= 100:
        raise ValueError("a price percent is between 0 and 100")
    if percent == 100:
        return price
    return PriceSheet(price.input * percent // 100, price.cached_input * percent // 100,
                      price.output * percent // 100, price.training * percent // 100)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def cost(price: PriceSheet, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> int:
    """Exact cost of a request in micro-units; cached prompt tokens at the cached price."""
    if not 0 <= cached_tokens <= prompt_tokens or completion_tokens < 0:
        raise ValueError("token counts out of range")
    total = ((prompt_tokens - cached_tokens) * price.input + cached_tokens * price.cached_input
             + completion_tokens * price.output)
    return _ceil_div(total, PER)


def hold_amount(price: PriceSheet, prompt_tokens: int, max_tokens: int) -> int:
    """The worst-case cost: every prompt token at the dearer input price, `max_tokens` of output.
    Never less than `cost` of any outcome the request can have."""
    dearest_input = max(price.input, price.cached_input)
    return _ceil_div(prompt_tokens * dearest_input + max_tokens * price.output, PER)


def training_sheet(price: PriceSheet) -> PriceSheet:
    """The sheet a fine-tuning job is held and settled at: each trained token (every epoch
    again) at the model's training price, as if it were an input token."""
    return PriceSheet(price.training, price.training, 0)


_AMOUNT = re.compile(r"([+-]?)(\d*)(?:\.(\d{0,6}))?")


def parse_amount(text: str) -> int:
    """'12.5' (units of currency) → 12_500_000 micro-units, exactly; at most 6 decimals."""
    match = _AMOUNT.fullmatch(text.strip())
    if match is None or not (match[2] or match[3]):
        raise ValueError(f"not an amount: {text!r} (use units of currency, at most 6 decimals)")
    micro = int(match[2] or "0") * MICRO + int((match[3] or "").ljust(6, "0"))
    return -micro if match[1] == "-" else micro


def format_amount(micro: int) -> str:
    """12_500_000 → '12.500000'."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO)
    return f"{sign}{whole}.{frac:06d}"


def set_price(session: Session, model: str, price: PriceSheet) -> None:
    """Set (or replace) the price of `model`."""
    row = session.get(Price, model)
    if row is None:
        session.add(Price(model=model, input=price.input, cached_input=price.cached_input,
                          output=price.output, training=price.training, updated_at=time.time()))
    else:
        row.input, row.cached_input, row.output = price.input, price.cached_input, price.output
        row.training = price.training
        row.updated_at = time.time()


def price_of(session: Session, model: str) -> PriceSheet:
    """The price of `model`; free if none is set."""
    row = session.get(Price, model)
    return FREE if row is None else PriceSheet(row.input, row.cached_input, row.output, row.training)


def all_prices(session: Session) -> dict[str, PriceSheet]:
    return {r.model: PriceSheet(r.input, r.cached_input, r.output, r.training)
            for r in session.scalars(select(Price).order_by(Price.model))}
