"""Routes under `/admin`. Amounts on the wire are decimal strings in units of currency
("12.5"); prices are per million tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from glmaas.api.errors import ApiError, ErrorKind, from_platform
from glmaas.api.requests import app_state, parse_body
from glmaas.platform import admin
from glmaas.platform.admin_token import is_admin
from glmaas.platform.errors import PlatformError
from glmaas.platform.keys import revoke_key
from glmaas.platform.pricing import PriceSheet, parse_amount

ADMIN_PREFIX = "/admin"


def caller_is_admin(request: Request) -> bool:
    return is_admin(request.headers.get("authorization"), app_state(request).admin_token)


def require_admin(request: Request) -> None:
    """Every admin route's first step, before its body is read."""
    if not caller_is_admin(request):
        raise ApiError(ErrorKind.ADMIN_AUTH, "This endpoint needs the admin token.")


router = APIRouter(prefix=ADMIN_PREFIX, dependencies=[Depends(require_admin)])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NewAccount(_Body):
    name: str = Field(min_length=1, max_length=128)


class Amount(_Body):
    amount: str | int | float
    note: str = ""


class NewKey(_Body):
    account: str
    name: str = ""
    models: list[str] | None = None
    expires_at: float | None = None
    rpm: int | None = Field(default=None, ge=0, le=admin.MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=0, le=admin.MAX_LIMIT)
    concurrency: int | None = Field(default=None, ge=0, le=admin.MAX_LIMIT)
    budget: str | int | float | None = None


class Limits(_Body):
    rpm: int | None = Field(default=None, ge=0, le=admin.MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=0, le=admin.MAX_LIMIT)
    concurrency: int | None = Field(default=None, ge=0, le=admin.MAX_LIMIT)


class NewPrice(_Body):
    input: str | int | float
    cached_input: str | int | float | None = None
    output: str | int | float
    training: str | int | float | None = None  # per million tokens a fine-tuning job trains


def _amount(value: Any, field: str) -> int:
    try:
        return parse_amount(str(value))
    except ValueError as exc:
        raise ApiError(ErrorKind.INVALID_REQUEST, str(exc), param=field) from None


async def _do(request: Request, action, status: int = 200) -> JSONResponse:  # type: ignore[no-untyped-def]
    """Run `action(session)` in one transaction, mapping domain errors onto the wire."""
    state = app_state(request)
    try:
        with state.db.session() as session, session.begin():
            result = action(session)
    except PlatformError as exc:
        raise from_platform(exc) from None
    except ValueError as exc:
        raise ApiError(ErrorKind.INVALID_REQUEST, str(exc)) from None
    return JSONResponse(result, status_code=status)


@router.post("/accounts")
async def create_account(request: Request) -> JSONResponse:
    body = await parse_body(request, NewAccount)
    return await _do(request, lambda s: admin.new_account(s, body.name), 201)


@router.get("/accounts/{name}")
async def show_account(request: Request, name: str) -> JSONResponse:
    return await _do(request, lambda s: admin.account_summary(s, name))


@router.post("/accounts/{name}/topup")
async def topup(request: Request, name: str) -> JSONResponse:
    return await _credit(request, name, admin.topup)


@router.post("/accounts/{name}/adjust")
async def adjust(request: Request, name: str) -> JSONResponse:
    return await _credit(request, name, admin.adjust)


async def _credit(request: Request, name: str, action) -> JSONResponse:  # type: ignore[no-untyped-def]
    """A top-up or an adjustment: `{"amount": "12.5", "note": "..."}`."""
    body = await parse_body(request, Amount)
    amount = _amount(body.amount, "amount")
    return await _do(request, lambda s: action(s, name, amount, body.note))


@router.put("/accounts/{name}/limits/{model}")
async def set_limits(request: Request, name: str, model: str) -> JSONResponse:
    body = await parse_body(request, Limits)
    return await _do(request, lambda s: admin.set_account_limits(s, name, model, body.rpm, body.tpm,
                                                                 body.concurrency))


@router.post("/keys")
async def create_key(request: Request) -> JSONResponse:
    body = await parse_body(request, NewKey)
    options = _key_options(body)
    box = app_state(request).box

    def action(session):  # type: ignore[no-untyped-def]
        view, key = admin.new_key(session, box, body.account, options)
        return {**view, "key": key}

    return await _do(request, action, 201)


def _key_options(body: NewKey) -> admin.KeyOptions:
    budget = None if body.budget is None else _amount(body.budget, "budget")
    try:
        return admin.KeyOptions(
            name=body.name, models=tuple(body.models) if body.models else None, expires_at=body.expires_at,
            rpm=body.rpm, tpm=body.tpm, concurrency=body.concurrency, budget=budget)
    except ValueError as exc:
        raise ApiError(ErrorKind.INVALID_REQUEST, str(exc)) from None


@router.delete("/keys/{key_id}")
async def revoke(request: Request, key_id: str) -> JSONResponse:
    return await _do(request, lambda s: {"id": revoke_key(s, key_id).id, "revoked": True})


@router.put("/prices/{model}")
async def put_price(request: Request, model: str) -> JSONResponse:
    body = await parse_body(request, NewPrice)
    inp = _amount(body.input, "input")
    price = PriceSheet(inp, inp if body.cached_input is None else _amount(body.cached_input, "cached_input"),
                       _amount(body.output, "output"),
                       0 if body.training is None else _amount(body.training, "training"))
    return await _do(request, lambda s: admin.put_price(s, model, price))


@router.get("/prices")
async def get_prices(request: Request) -> JSONResponse:
    return await _do(request, admin.prices)


@router.get("/usage")
async def usage(request: Request, by: str = "account,model", account: str | None = None) -> JSONResponse:
    dims = tuple(d.strip() for d in by.split(",") if d.strip())
    return await _do(request, lambda s: {"data": admin.usage_report(s, dims, account)})
