"""The console's forms read into domain values: amounts, limits, model lists, expiry dates. A
field that cannot be read is a `FormError` naming it; the page shows it beside the form."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session
from starlette.datastructures import FormData

from glmaas.api.state import AppState
from glmaas.platform import admin
from glmaas.platform.errors import PlatformError, Refusal
from glmaas.platform.pricing import parse_amount

MAX_TEXT = 128  # key and model names: the width of the columns they are stored in
T = TypeVar("T")
_STATUS = {Refusal.NOT_FOUND: 404, Refusal.CONFLICT: 409}  # any other refusal: 400


class FormError(ValueError):
    """A form the console cannot act on (a field it cannot read, or what the platform refused);
    the message is shown beside the form, with `status`."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def transact(state: AppState, action: Callable[[Session], T]) -> T:
    """Run a platform action in one transaction; its refusals become `FormError`s."""
    try:
        with state.db.session() as session, session.begin():
            return action(session)
    except PlatformError as exc:
        raise FormError(str(exc), _STATUS.get(exc.kind, 400)) from None
    except ValueError as exc:
        raise FormError(str(exc)) from None


def text(form: FormData, field: str, *, required: bool = False, max_chars: int = MAX_TEXT) -> str:
    value = form.get(field, "")
    value = value.strip() if isinstance(value, str) else ""
    if required and not value:
        raise FormError(f"{field.replace('_', ' ').capitalize()} is required.")
    if len(value) > max_chars:
        raise FormError(f"{field.replace('_', ' ').capitalize()} is at most {max_chars} characters.")
    return value


def amount(form: FormData, field: str) -> int:
    """An amount in units of currency ('12.5'), as micro-units."""
    try:
        return parse_amount(text(form, field, required=True))
    except ValueError as exc:
        raise FormError(str(exc)) from None


def optional_amount(form: FormData, field: str) -> int | None:
    return amount(form, field) if text(form, field) else None


def limit(form: FormData, field: str) -> int | None:
    """A rate limit (rpm, tpm, concurrency): empty for none."""
    value = text(form, field)
    if not value:
        return None
    if not value.isdigit() or int(value) > admin.MAX_LIMIT:
        raise FormError(f"{field} must be a whole number from 0 to {admin.MAX_LIMIT}, or empty for no limit.")
    return int(value)


def models(form: FormData, field: str = "models") -> tuple[str, ...] | None:
    """Allowed models, comma or space separated; empty for every model."""
    names = tuple(m for m in text(form, field, max_chars=4096).replace(",", " ").split() if m)
    return names or None


def expiry(form: FormData, field: str = "expires") -> float | None:
    """An expiry date (YYYY-MM-DD, the end of that day in UTC), as a Unix time; empty for never."""
    value = text(form, field)
    if not value:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except ValueError:
        raise FormError("Expiry is a date, YYYY-MM-DD.") from None
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    return end.timestamp()


def key_options(form: FormData, *, with_limits: bool) -> admin.KeyOptions:
    """A new key's options; limits and budget only where the form offers them (the operator's)."""
    options = dict(name=text(form, "name"), models=models(form), expires_at=expiry(form))
    if with_limits:
        options.update(rpm=limit(form, "rpm"), tpm=limit(form, "tpm"), concurrency=limit(form, "concurrency"),
                       budget=optional_amount(form, "budget"))
    try:
        return admin.KeyOptions(**options)  # type: ignore[arg-type]
    except ValueError as exc:
        raise FormError(str(exc)) from None
