"""The operator's pages: accounts and their money, keys, prices, limits, usage and the models
served. Every action is a platform function the CLI and the `/admin` API call too."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from glmaas.api.console import forms
from glmaas.api.console.charts import METRICS, stacked_by_day
from glmaas.api.console.engines import served_models
from glmaas.api.console.forms import FormError, transact
from glmaas.api.console.guard import operator_of
from glmaas.api.console.pages import render, see_other
from glmaas.api.requests import app_state
from glmaas.platform import admin
from glmaas.platform.keys import revoke_key
from glmaas.platform.ledger import EntryKind
from glmaas.platform.pricing import PriceSheet

router = APIRouter()
LEDGER_ROWS = 100
USAGE_ROWS = 500
# A request's hold and release cancel out once it settles: the ledger shows them on demand.
MONEY_KINDS = (EntryKind.TOPUP, EntryKind.ADJUSTMENT, EntryKind.REFUND, EntryKind.SETTLEMENT)
# Where a form may send the operator back to (a revoke button sits on two pages).
_BACK = re.compile(r"/keys|/accounts/[A-Za-z0-9._-]{1,128}")


# Accounts.

@router.get("/accounts")
async def accounts(request: Request) -> Response:
    return accounts_page(request)


def accounts_page(request: Request, error: str = "", status: int = 200) -> Response:
    operator_of(request)
    state = app_state(request)
    accounts = transact(state, admin.accounts_overview)
    return render(request, "accounts.html", status, error=error, accounts=accounts,
                  models=len(state.registry.models()), total_balance=sum(a["balance_micro"] for a in accounts),
                  usable_keys=sum(a["usable_keys"] for a in accounts))


@router.post("/accounts")
async def create_account(request: Request) -> Response:
    operator_of(request)
    form = await request.form()
    try:
        name = forms.text(form, "name", required=True)
        transact(app_state(request), lambda s: admin.new_account(s, name))
    except FormError as exc:
        return accounts_page(request, str(exc), exc.status)
    return see_other(f"/accounts/{name}", done="Account created.")


@router.get("/accounts/{name}")
async def account(request: Request, name: str) -> Response:
    return account_page(request, name)


def account_page(request: Request, name: str, error: str = "", status: int = 200, new_key: str = "") -> Response:
    operator_of(request)
    state = app_state(request)
    every_entry = request.query_params.get("entries") == "all"

    def read(s: Any) -> dict:
        return {"account": admin.account_summary(s, name),
                "entries": admin.ledger_entries(s, name, LEDGER_ROWS, None if every_entry else MONEY_KINDS),
                "keys": admin.keys_with_limits(s, name),
                "key_usage": {r["key"]: r for r in admin.usage_report(s, ("key",), name)},
                "chart": stacked_by_day(admin.usage_report(s, ("day", "model"), name), "model")}

    try:
        page = transact(state, read)
    except FormError as exc:
        return render(request, "error.html", exc.status, message=str(exc))
    return render(request, "account.html", status, error=error, new_key=new_key, back=f"/accounts/{name}",
                  every_entry=every_entry,
                  models=[m.model_id for m in state.registry.models()], **page)


@router.post("/accounts/{name}/topup")
async def topup(request: Request, name: str) -> Response:
    return await _credit(request, name, admin.topup, "Top-up recorded.")


@router.post("/accounts/{name}/adjust")
async def adjust(request: Request, name: str) -> Response:
    return await _credit(request, name, admin.adjust, "Adjustment recorded.")


async def _credit(request: Request, name: str, action: Any, done: str) -> Response:
    operator_of(request)
    form = await request.form()
    try:
        amount = forms.amount(form, "amount")
        note = forms.text(form, "note", required=action is admin.adjust, max_chars=500)
        transact(app_state(request), lambda s: action(s, name, amount, note))
    except FormError as exc:
        return account_page(request, name, str(exc), exc.status)
    return see_other(f"/accounts/{name}", done=done)


@router.post("/accounts/{name}/limits")
async def set_limits(request: Request, name: str) -> Response:
    operator_of(request)
    form = await request.form()
    try:
        model = forms.text(form, "model", required=True)
        limits = [forms.limit(form, f) for f in ("rpm", "tpm", "concurrency")]
        transact(app_state(request), lambda s: admin.set_account_limits(s, name, model, *limits))
    except FormError as exc:
        return account_page(request, name, str(exc), exc.status)
    return see_other(f"/accounts/{name}", done="Limits saved.")


@router.post("/accounts/{name}/keys")
async def create_account_key(request: Request, name: str) -> Response:
    operator_of(request)
    try:
        key = await _new_key(request, name)
    except FormError as exc:
        return account_page(request, name, str(exc), exc.status)
    return account_page(request, name, new_key=key)


# Keys.

@router.get("/keys")
async def keys(request: Request) -> Response:
    return keys_page(request)


def keys_page(request: Request, error: str = "", status: int = 200, new_key: str = "") -> Response:
    operator_of(request)
    state = app_state(request)

    def read(s: Any) -> dict:
        return {"keys": admin.keys_with_limits(s),
                "key_usage": {r["key"]: r for r in admin.usage_report(s, ("key",))},
                "accounts": [a["name"] for a in admin.accounts_overview(s)]}

    return render(request, "keys.html", status, error=error, new_key=new_key, back="/keys",
                  models=[m.model_id for m in state.registry.models()], **transact(state, read))


@router.post("/keys")
async def create_key(request: Request) -> Response:
    operator_of(request)
    form = await request.form()
    try:
        key = await _new_key(request, forms.text(form, "account", required=True))
    except FormError as exc:
        return keys_page(request, str(exc), exc.status)
    return keys_page(request, new_key=key)


async def _new_key(request: Request, account: str) -> str:
    """Create a key from the form; the key itself, to be shown once."""
    options = forms.key_options(await request.form(), with_limits=True)
    state = app_state(request)
    _, key = transact(state, lambda s: admin.new_key(s, state.box, account, options))
    return key


@router.post("/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: str) -> Response:
    operator_of(request)
    form = await request.form()
    back = forms.text(form, "back")
    back = back if _BACK.fullmatch(back) else "/keys"
    try:
        transact(app_state(request), lambda s: revoke_key(s, key_id))
    except FormError as exc:
        return render(request, "error.html", exc.status, message=str(exc))
    return see_other(back, done="Key revoked.")


# Prices.

@router.get("/prices")
async def prices(request: Request) -> Response:
    return prices_page(request)


def prices_page(request: Request, error: str = "", status: int = 200) -> Response:
    operator_of(request)
    state = app_state(request)
    return render(request, "prices.html", status, error=error, prices=transact(state, admin.prices),
                  models=[m.model_id for m in state.registry.models()])


@router.post("/prices")
async def put_price(request: Request) -> Response:
    operator_of(request)
    form = await request.form()
    try:
        model = forms.text(form, "model", required=True)
        given = forms.amount(form, "input")
        cached = forms.optional_amount(form, "cached_input")
        price = PriceSheet(given, given if cached is None else cached, forms.amount(form, "output"))
        transact(app_state(request), lambda s: admin.put_price(s, model, price))
    except (FormError, ValueError) as exc:
        return prices_page(request, str(exc), getattr(exc, "status", 400))
    return see_other("/prices", done="Price saved.")


# Usage and models.

@router.get("/usage")
async def usage_page(request: Request, account: str = "", series: str = "model", metric: str = "tokens") -> Response:
    operator_of(request)
    series = series if series in ("model", "account") else "model"
    metric = metric if metric in METRICS else "tokens"
    chosen = account or None

    def read(s: Any) -> dict:
        return {"rows": admin.usage_report(s, ("day", "account", "model"), chosen),
                "accounts": [a["name"] for a in admin.accounts_overview(s)]}

    page = transact(app_state(request), read)
    return render(request, "usage.html", chart=stacked_by_day(page["rows"], series, metric),
                  rows=page["rows"][::-1][:USAGE_ROWS], total_rows=len(page["rows"]), accounts=page["accounts"],
                  account=account, series=series, metric=metric, metrics=list(METRICS))


@router.get("/models")
async def models_page(request: Request) -> Response:
    operator_of(request)
    return render(request, "models.html", models=served_models(app_state(request)))
