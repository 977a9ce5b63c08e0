"""Routes: `/v1/files` and `/api/paas/v4/files` — upload (multipart), list, retrieve, content,
delete. Every file is its account's: another account's id answers 404."""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from glmaas.api.dialects import DIALECTS
from glmaas.api.errors import ApiError, ErrorKind
from glmaas.api.files.protocol import FileDeleted, FileList, FileObject
from glmaas.api.requests import (
    JSONModelResponse,
    app_state,
    authenticate,
    refusals_on_wire,
)
from glmaas.platform import files

# Form fields besides the file are short; a multipart body of more parts than this is not ours.
MAX_FORM_PARTS = 8
MAX_FIELD_BYTES = 64 * 1024
MAX_LIST_LIMIT = 10_000


async def create_file(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(ErrorKind.INVALID_REQUEST, "Upload a file as multipart/form-data with fields file and purpose.")
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_PARTS, max_part_size=MAX_FIELD_BYTES)
    except (MultiPartException, HTTPException) as exc:
        # Starlette raises its parser's error as an HTTPException inside an app.
        detail = exc.detail if isinstance(exc, HTTPException) else exc.message
        raise ApiError(ErrorKind.INVALID_REQUEST, f"The multipart body cannot be read: {detail}") from None
    try:
        upload, purpose = form.get("file"), form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise ApiError(ErrorKind.MISSING_FIELD, "Missing required parameter: file.", param="file")
        if not isinstance(purpose, str) or not purpose:
            raise ApiError(ErrorKind.MISSING_FIELD, "Missing required parameter: purpose.", param="purpose")
        data = await upload.read(state.max_file_bytes + 1)
        filename = upload.filename or "upload.jsonl"
    finally:
        await form.close()
    if len(data) > state.max_file_bytes:
        raise ApiError(ErrorKind.BODY_TOO_LARGE, f"The file exceeds {state.max_file_bytes} bytes.", param="file")
    with refusals_on_wire(), state.db.session() as session, session.begin():
        info = files.upload(session, state.blobs, account_id=principal.account_id, purpose=purpose,
                            filename=filename, data=data)
    return JSONModelResponse(FileObject.of(info))


def _int_param(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= high:
        raise ApiError(ErrorKind.INVALID_REQUEST, f"{name} must be an integer from 1 to {high}.", param=name)
    return int(raw)


async def list_files(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    limit = _int_param(request, "limit", MAX_LIST_LIMIT, MAX_LIST_LIMIT)
    order = request.query_params.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ApiError(ErrorKind.INVALID_REQUEST, "order must be asc or desc.", param="order")
    with state.db.session() as session:
        found, more = files.list_files(session, principal.account_id, purpose=request.query_params.get("purpose"),
                                       limit=limit, after=request.query_params.get("after"),
                                       newest_first=order == "desc")
    data = [FileObject.of(f) for f in found]
    return JSONModelResponse(FileList(data=data, has_more=more, first_id=data[0].id if data else None,
                                      last_id=data[-1].id if data else None))


async def retrieve_file(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session:
        info = files.get_file(session, principal.account_id, request.path_params["file_id"])
    return JSONModelResponse(FileObject.of(info))


async def file_content(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    with refusals_on_wire(), state.db.session() as session:
        data = files.file_content(session, state.blobs, principal.account_id, request.path_params["file_id"])
    return Response(data, media_type="application/octet-stream")


async def delete_file(request: Request) -> Response:
    state = app_state(request)
    principal = authenticate(request)
    file_id = request.path_params["file_id"]
    with refusals_on_wire(), state.db.session() as session, session.begin():
        files.delete_file(session, state.blobs, principal.account_id, file_id)
    return JSONModelResponse(FileDeleted(id=file_id))


routes = [route for d in DIALECTS for route in (
    Route(d.path("/files"), create_file, methods=["POST"]),
    Route(d.path("/files"), list_files, methods=["GET"]),
    Route(d.path("/files/{file_id}"), retrieve_file, methods=["GET"]),
    Route(d.path("/files/{file_id}"), delete_file, methods=["DELETE"]),
    Route(d.path("/files/{file_id}/content"), file_content, methods=["GET"]),
)]
