"""Signing in and out: operators with the admin token, tenants with one of their API keys. What
was typed is checked once and forgotten; the session remembers only who signed in."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from glmaas.api.console.guard import session_of
from glmaas.api.console.pages import render, see_other
from glmaas.api.console.session import Role, admin_fingerprint, clear_session, write_session
from glmaas.api.requests import app_state
from glmaas.platform.admin_token import is_admin
from glmaas.platform.errors import AuthError

router = APIRouter()


@router.get("/login")
async def login_page(request: Request) -> Response:
    return render(request, "login.html")


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    credential = str(form.get("credential", "")).strip()
    state = app_state(request)
    session = session_of(request)
    if credential and is_admin(credential, state.admin_token):
        session = session.signed_in(Role.OPERATOR, admin_fingerprint=admin_fingerprint(state.box, state.admin_token))
        target = "/accounts"
    else:
        try:
            principal = state.authenticator.authenticate(f"Bearer {credential}")
        except AuthError:
            return render(request, "login.html", 401, error="That is neither the admin token nor a usable API key.")
        session = session.signed_in(Role.TENANT, key_id=principal.key_id, account_id=principal.account_id)
        target = "/account"
    response = see_other(target)
    write_session(response, request, state.box, session)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    response = see_other("/login", done="Signed out.")
    clear_session(response, request)
    return response

