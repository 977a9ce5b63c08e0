"""Wire schemas of files, in the order of the public docs (OpenAI's; Zhipu's are the same)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

from glmaas.platform.files import FileInfo


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: Literal["processed"] = "processed"
    status_details: str | None = None

    @classmethod
    def of(cls, info: FileInfo) -> FileObject:
        return cls(id=info.id, bytes=info.bytes, created_at=info.created_at, filename=info.filename,
                   purpose=info.purpose)


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool = True
