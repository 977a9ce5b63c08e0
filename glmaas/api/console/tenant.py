"""A tenant's page: their own account only — balance, their keys and what each used, usage by day
and model, and creating or revoking keys of that account. Nothing here takes an account name:
the account is the one the signed-in key belongs to."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from glmaas.api.console import forms
from glmaas.api.console.charts import stacked_by_day
from glmaas.api.console.forms import FormError, transact
from glmaas.api.console.guard import Tenant, tenant_of
from glmaas.api.console.pages import render, see_other
from glmaas.api.requests import app_state
from glmaas.platform import admin
from glmaas.platform.errors import NotFound
from glmaas.platform.keys import key_view, revoke_key

router = APIRouter()


@router.get("/account")
async def account(request: Request) -> Response:
    return account_page(request, tenant_of(request))


def account_page(request: Request, tenant: Tenant, error: str = "", status: int = 200, new_key: str = "") -> Response:
    state = app_state(request)

    def read(s: Any) -> dict:
        return {"account": admin.account_summary(s, tenant.account),
                "keys": admin.keys_with_limits(s, tenant.account),
                "key_usage": {r["key"]: r for r in admin.usage_report(s, ("key",), tenant.account)},
                "chart": stacked_by_day(admin.usage_report(s, ("day", "model"), tenant.account), "model")}

    return render(request, "tenant.html", status, error=error, new_key=new_key, signed_in_key=tenant.key_id,
                  models=[m.model_id for m in state.registry.models()], **transact(state, read))


@router.post("/account/keys")
async def create_key(request: Request) -> Response:
    tenant = tenant_of(request)
    state = app_state(request)
    try:
        options = forms.key_options(await request.form(), with_limits=False)
        _, key = transact(state, lambda s: admin.new_key(s, state.box, tenant.account, options))
    except FormError as exc:
        return account_page(request, tenant, str(exc), exc.status)
    return account_page(request, tenant, new_key=key)


@router.post("/account/keys/{key_id}/revoke")
async def revoke(request: Request, key_id: str) -> Response:
    tenant = tenant_of(request)

    def revoke_own(s: Any) -> None:
        # Another account's key is as absent as a key that does not exist.
        if key_view(s, key_id).account != tenant.account:
            raise NotFound(f"no key with id {key_id!r}")
        revoke_key(s, key_id)

    try:
        transact(app_state(request), revoke_own)
    except FormError as exc:
        return render(request, "error.html", exc.status, message=str(exc))
    return see_other("/account", done="Key revoked.")
