"""Files: uploads an account keeps for batches and fine-tuning, and the files batches write.

A file belongs to one account; to any other account it does not exist (`NotFound`). Uploads are
JSONL, checked line by line before anything is stored, so a bad file is refused with the numbers
of its bad lines instead of failing later inside a batch.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass

from sqlalchemy.orm import Session

from glmaas.platform.errors import NotFound, PlatformError
from glmaas.store.blobs import BlobStore
from glmaas.store.paging import page
from glmaas.store.tables import StoredFile

UPLOAD_PURPOSES = ("batch", "fine-tune")
BATCH_OUTPUT = "batch_output"
# A refusal names at most this many bad lines.
MAX_LINE_ERRORS = 5
MAX_LIST = 10_000


class InvalidFile(PlatformError):
    """The upload is not a file of its purpose; the message names the bad lines."""


@dataclass(frozen=True)
class FileInfo:
    id: str
    purpose: str
    filename: str
    bytes: int
    created_at: int


def _info(row: StoredFile) -> FileInfo:
    return FileInfo(row.id, row.purpose, row.filename, row.bytes, int(row.created_at))


def new_file_id() -> str:
    return f"file-{secrets.token_hex(12)}"


def _batch_line_problem(record: dict, seen: set[str]) -> str | None:
    custom_id = record.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return "custom_id must be a non-empty string"
    if custom_id in seen:
        return f"custom_id {custom_id!r} is used twice"
    seen.add(custom_id)
    if record.get("method", "POST") != "POST":
        return "method must be POST"
    if not isinstance(record.get("url"), str):
        return "url must be a string"
    if not isinstance(record.get("body"), dict):
        return "body must be a JSON object"
    return None


def _fine_tune_problem(record: dict) -> str | None:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return "messages must be a non-empty list of message objects"
    return None


def parse_jsonl(data: bytes, purpose: str) -> list[dict]:
    """The records of a JSONL upload, or `InvalidFile` naming (up to five of) its bad lines.
    Blank lines are skipped."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidFile("The file is not UTF-8 text; upload JSONL (one JSON object per line).") from None
    problems: list[str] = []
    records: list[dict] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"line {number}: not valid JSON ({exc.msg})")
            continue
        if not isinstance(record, dict):
            problems.append(f"line {number}: not a JSON object")
            continue
        problem = _batch_line_problem(record, seen) if purpose == "batch" else _fine_tune_problem(record)
        if problem:
            problems.append(f"line {number}: {problem}")
        records.append(record)
    if problems:
        more = f" (and {len(problems) - MAX_LINE_ERRORS} more)" if len(problems) > MAX_LINE_ERRORS else ""
        raise InvalidFile(f"Invalid {purpose} file: " + "; ".join(problems[:MAX_LINE_ERRORS]) + more)
    if not records:
        raise InvalidFile("The file has no lines; upload JSONL (one JSON object per line).")
    return records


def store_file(session: Session, blobs: BlobStore, *, account_id: str, purpose: str, filename: str,
               data: bytes) -> FileInfo:
    """Keep `data` as a file of the account (in the session's transaction); unchecked."""
    row = StoredFile(id=new_file_id(), account_id=account_id, purpose=purpose,
                     filename=filename[:255], bytes=len(data), created_at=time.time())
    session.add(row)
    session.flush()
    blobs.put(session.connection(), row.id, data)
    return _info(row)


def upload(session: Session, blobs: BlobStore, *, account_id: str, purpose: str, filename: str,
           data: bytes) -> FileInfo:
    """Check an upload against its purpose and keep it, or raise `InvalidFile`."""
    if purpose not in UPLOAD_PURPOSES:
        raise InvalidFile(f"Unknown purpose {purpose!r}; use one of: {', '.join(UPLOAD_PURPOSES)}.")
    parse_jsonl(data, purpose)
    return store_file(session, blobs, account_id=account_id, purpose=purpose, filename=filename, data=data)


def _owned(session: Session, account_id: str, file_id: str) -> StoredFile:
    row = session.get(StoredFile, file_id) if len(file_id) <= 64 else None
    if row is None or row.account_id != account_id:
        raise NotFound(f"No such file: {file_id!r}.")
    return row


def get_file(session: Session, account_id: str, file_id: str) -> FileInfo:
    """The account's file, or `NotFound` (also when it is another account's)."""
    return _info(_owned(session, account_id, file_id))


def file_content(session: Session, blobs: BlobStore, account_id: str, file_id: str) -> bytes:
    """The bytes of the account's file, or `NotFound`."""
    _owned(session, account_id, file_id)
    data = blobs.get(session.connection(), file_id)
    if data is None:
        raise NotFound(f"The content of file {file_id!r} is gone.")
    return data


def list_files(session: Session, account_id: str, *, purpose: str | None = None, limit: int = MAX_LIST,
               after: str | None = None, newest_first: bool = True) -> tuple[list[FileInfo], bool]:
    """The account's files (newest first unless asked), and whether more follow; paged in SQL."""
    where = [StoredFile.account_id == account_id]
    if purpose:
        where.append(StoredFile.purpose == purpose)
    rows, more = page(session, StoredFile, where, after=after, limit=limit, newest_first=newest_first)
    return [_info(r) for r in rows], more


def delete_file(session: Session, blobs: BlobStore, account_id: str, file_id: str) -> None:
    """Delete the account's file and its bytes, or `NotFound`."""
    row = _owned(session, account_id, file_id)
    session.delete(row)
    session.flush()
    blobs.delete(session.connection(), file_id)
