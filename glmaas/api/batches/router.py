"""Routes: `/v1/batches` and `/api/paas/v4/batches` — create from an uploaded file, retrieve,
list, cancel. The lines run in the background workers (`glmaas.jobs`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.batches.protocol import BatchCreateRequest, BatchList, BatchObject
from glmaas.api.dialects import DIALECTS, dialect_of
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.openapi import BodyRoute
from glmaas.api.requests import (
    JSONModelResponse,
    app_state,
    authenticate,
    parse_body,
    refusals_on_wire,
)
from glmaas.jobs import batches

MAX_LIST_LIMIT = 100


async def create_batch(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    body = await parse_body(request, BatchCreateRequest)
    with refusals_on_wire(), state.db.session() as session, session.begin():
        batch = batches.create_batch(
            session, state.blobs, account_id=principal.account_id, key_id=principal.key_id,
            dialect=dialect_of(request.scope["path"]).name, input_file_id=body.input_file_id,
            endpoint=body.endpoint, completion_window=body.completion_window, metadata=body.metadata)
        session.flush()
        obj = BatchObject.of(batch, batches.request_counts(session, batch))
    return JSONModelResponse(obj)


async def retrieve_batch(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session:
        batch = batches.get_batch(session, principal.account_id, request.path_params["batch_id"])
        obj = BatchObject.of(batch, batches.request_counts(session, batch))
    return JSONModelResponse(obj)


async def list_batches(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    raw = request.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise ApiError(ErrorKind.INVALID_REQUEST, f"limit must be an integer from 1 to {MAX_LIST_LIMIT}.",
                       param="limit")
    with state.db.session() as session:
        found, more = batches.list_batches(session, principal.account_id, limit=int(raw),
                                           after=request.query_params.get("after"))
        data = [BatchObject.of(b, batches.request_counts(session, b)) for b in found]
    return JSONModelResponse(BatchList(data=data, has_more=more, first_id=data[0].id if data else None,
                                       last_id=data[-1].id if data else None))


async def cancel_batch(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    batch_id = request.path_params["batch_id"]
    with refusals_on_wire(), state.db.session() as session, session.begin():
        batches.cancel_batch(session, principal.account_id, batch_id)
    # Nothing may be running: then the batch ends now.
    with state.db.session() as session, session.begin():
        batches.finalize(session, state.blobs, batch_id)
    with state.db.session() as session:
        batch = batches.get_batch(session, principal.account_id, batch_id)
        obj = BatchObject.of(batch, batches.request_counts(session, batch))
    return JSONModelResponse(obj)


body_routes = [BodyRoute(d.path("/batches"), f"Create a batch ({d.name} dialect)", BatchCreateRequest, BatchObject)
               for d in DIALECTS]
routes = [route for d in DIALECTS for route in (
    Route(d.path("/batches"), create_batch, methods=["POST"]),
    Route(d.path("/batches"), list_batches, methods=["GET"]),
    Route(d.path("/batches/{batch_id}"), retrieve_batch, methods=["GET"]),
    Route(d.path("/batches/{batch_id}/cancel"), cancel_batch, methods=["POST"]),
)]
