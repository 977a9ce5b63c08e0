"""Cursor paging of list endpoints in SQL, as OpenAI's lists page: rows ordered by creation time
(ties broken by id), `after` the id of the last row the caller saw, `limit` rows at most.

The page is read with one keyset query: the rows strictly past the cursor's (created_at, id),
under the caller's filter (which scopes it to the account), `limit + 1` of them, the extra row
only telling whether more follow. A cursor that is not a row under that filter (another account's
object, a deleted one) gives an empty page, as before.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

T = TypeVar("T")


def page(session: Session, model: type[T], where: list[ColumnElement[bool]], *, after: str | None, limit: int,
         newest_first: bool = True) -> tuple[list[T], bool]:
    """One page of `model`'s rows under `where`, and whether more follow."""
    created: InstrumentedAttribute[Any] = model.created_at  # type: ignore[attr-defined]
    ident: InstrumentedAttribute[Any] = model.id  # type: ignore[attr-defined]
    query = select(model).where(*where)
    if after:
        cursor = session.execute(select(created, ident).where(*where, ident == after)).first()
        if cursor is None:
            return [], False
        at, cursor_id = cursor
        past = (or_(created < at, and_(created == at, ident < cursor_id)) if newest_first
                else or_(created > at, and_(created == at, ident > cursor_id)))
        query = query.where(past)
    order = (created.desc(), ident.desc()) if newest_first else (created.asc(), ident.asc())
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
