"""Batches in the store: lines leased once each, the files written once, and a batch past its
completion window expired with its unstarted lines in the error file."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from sqlalchemy import update

from glmaas.jobs import batches, leases
from glmaas.jobs.leases import ItemState
from glmaas.jobs.worker import Workers
from glmaas.platform.accounts import create_account
from glmaas.platform.files import file_content, upload
from glmaas.store.blobs import FolderBlobs
from glmaas.store.db import Database, sqlite_url
from glmaas.store.tables import Batch, WorkItem


def line(custom_id: str) -> str:
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]}})


@pytest.fixture
def store(tmp_path):  # type: ignore[no-untyped-def]
    db = Database(sqlite_url(tmp_path))
    blobs = FolderBlobs(tmp_path / "files")
    with db.session() as session, session.begin():
        account = create_account(session, "acme")
        data = "\n".join(line(f"c{i}") for i in range(3)).encode()
        info = upload(session, blobs, account_id=account.id, purpose="batch", filename="in.jsonl", data=data)
        batch = batches.create_batch(session, blobs, account_id=account.id, key_id="k", dialect="openai",
                                     input_file_id=info.id, endpoint="/v1/chat/completions",
                                     completion_window="24h", metadata=None)
    yield db, blobs, account.id, batch.id
    db.dispose()


def test_each_line_is_leased_once_until_its_lease_expires(store) -> None:  # type: ignore[no-untyped-def]
    db, _, _, _ = store
    taken = [leases.take(db.engine, "a", 60) for _ in range(3)]
    assert sorted(t.custom_id for t in taken) == ["c0", "c1", "c2"]
    assert leases.take(db.engine, "b", 60) is None
    with db.engine.begin() as conn:  # the first lease lapses: its worker died
        conn.exec_driver_sql(f"UPDATE work_items SET lease_until = 0 WHERE id = '{taken[0].id}'")
    again = leases.take(db.engine, "b", 60)
    assert (again.id, again.attempt) == (taken[0].id, 2)
    with db.engine.begin() as conn:  # the old attempt can no longer finish the line
        assert not leases.finish(conn, taken[0], ItemState.DONE, "{}")
        assert leases.finish(conn, again, ItemState.DONE, "{}")


def test_finalize_writes_the_files_once(store) -> None:  # type: ignore[no-untyped-def]
    db, blobs, account_id, batch_id = store
    for state in (ItemState.DONE, ItemState.FAILED, ItemState.DONE):
        item = leases.take(db.engine, "a", 60)
        with db.session() as session, session.begin():
            assert not batches.finalize(session, blobs, batch_id)
        with db.engine.begin() as conn:
            leases.finish(conn, item, state, json.dumps({"custom_id": item.custom_id}))
    with db.session() as session, session.begin():
        assert batches.finalize(session, blobs, batch_id)
    with db.session() as session, session.begin():
        assert not batches.finalize(session, blobs, batch_id)
        batch = batches.get_batch(session, account_id, batch_id)
        assert batch.status == "completed"
        out = file_content(session, blobs, account_id, batch.output_file_id).decode().splitlines()
        assert [json.loads(o)["custom_id"] for o in out] == ["c0", "c2"]
        assert batches.request_counts(session, batch) == batches.RequestCounts(3, 2, 1)


def test_a_batch_past_its_window_expires(store) -> None:  # type: ignore[no-untyped-def]
    db, blobs, account_id, batch_id = store
    running = leases.take(db.engine, "a", 60)
    with db.session() as session, session.begin():
        assert batches.expire_overdue(session, now=time.time() + 25 * 3600) == [batch_id]
    with db.session() as session, session.begin():
        assert not batches.finalize(session, blobs, batch_id)  # a line is still running
    with db.engine.begin() as conn:
        leases.finish(conn, running, ItemState.DONE, json.dumps({"custom_id": running.custom_id}))
    with db.session() as session, session.begin():
        assert batches.finalize(session, blobs, batch_id)
        batch = batches.get_batch(session, account_id, batch_id)
        assert batch.status == "expired" and batch.expired_at is not None
        errors = [json.loads(e) for e in file_content(session, blobs, account_id, batch.error_file_id).splitlines()]
        assert {e["error"]["code"] for e in errors} == {"batch_expired"} and len(errors) == 2
        assert session.query(WorkItem).filter_by(batch_id=batch_id, state=ItemState.PENDING).count() == 0


def test_lines_of_a_stopped_replica_are_taken_back_without_waiting_for_the_lease(
        store) -> None:  # type: ignore[no-untyped-def]
    db, _, _, _ = store
    item = leases.take(db.engine, "elsewhere:4242:1", 3600)  # a replica with no heartbeat: stopped
    with db.session() as session, session.begin():
        assert leases.release_stopped(session, "me") == 1
    again = leases.take(db.engine, "me", 60)
    assert (again.id, again.attempt) == (item.id, 2)
    with db.session() as session, session.begin():
        assert leases.release_stopped(session, "me") == 0  # its own lines are never taken back


def test_an_attempt_that_fails_goes_back_to_the_queue(store) -> None:  # type: ignore[no-untyped-def]
    db, blobs, account_id, batch_id = store
    attempts: list[tuple[str, int]] = []

    async def handler(item: leases.LeasedItem) -> None:
        attempts.append((item.custom_id, item.attempt))
        if len(attempts) == 1:
            raise RuntimeError("the database went away")
        with db.engine.begin() as conn:
            leases.finish(conn, item, ItemState.DONE, json.dumps({"custom_id": item.custom_id}))

    async def run_until_done() -> None:
        worker = asyncio.create_task(Workers(db, blobs, "me", handler, count=1, lease_s=60)._work())
        try:
            for _ in range(100):
                with db.session() as session:
                    if batches.get_batch(session, account_id, batch_id).status == "completed":
                        return
                await asyncio.sleep(0.05)
        finally:
            worker.cancel()

    asyncio.run(run_until_done())
    assert attempts[0] == ("c0", 1) and ("c0", 2) in attempts
    assert sorted(custom_id for custom_id, _ in attempts) == ["c0", "c0", "c1", "c2"]


def test_a_stopping_replica_takes_no_new_line(store) -> None:  # type: ignore[no-untyped-def]
    db, blobs, _, _ = store
    taken: list[str] = []

    async def handler(item: leases.LeasedItem) -> None:
        taken.append(item.custom_id)

    async def run_a_while() -> None:
        worker = asyncio.create_task(Workers(db, blobs, "me", handler, count=1, lease_s=60,
                                             stopping=lambda: True)._work())
        await asyncio.sleep(0.5)
        worker.cancel()

    asyncio.run(run_a_while())
    assert taken == []
    assert leases.take(db.engine, "another", 60) is not None  # the queue is left to the others


def lapse(db, item_id: str) -> None:  # type: ignore[no-untyped-def]
    with db.engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE work_items SET lease_until = 0 WHERE id = '{item_id}'")


def test_a_line_whose_attempts_keep_dying_fails_once_after_the_cap(store) -> None:  # type: ignore[no-untyped-def]
    db, blobs, account_id, batch_id = store
    first = leases.take(db.engine, "a", 60, max_attempts=3)
    for attempt in (1, 2, 3):  # each attempt's replica dies: its lease lapses
        assert not first.exhausted
        lapse(db, first.id)
        again = leases.take(db.engine, "b", 60, max_attempts=3)
        assert (again.id, again.attempt) == (first.id, attempt + 1)
        first = again
    assert first.exhausted  # the fourth take only ends it
    lapse(db, first.id)
    ran: list[str] = []
    ended: list[tuple[str, int]] = []

    async def handler(item: leases.LeasedItem) -> None:
        ran.append(item.custom_id)
        with db.engine.begin() as conn:
            leases.finish(conn, item, ItemState.DONE, json.dumps({"custom_id": item.custom_id}))

    async def exhausted(item: leases.LeasedItem) -> None:
        ended.append((item.custom_id, item.attempt))
        with db.engine.begin() as conn:
            leases.finish(conn, item, ItemState.FAILED, json.dumps({"custom_id": item.custom_id,
                                                                    "error": {"code": "max_attempts_exceeded"}}))

    async def run_until_done() -> None:
        workers = Workers(db, blobs, "me", handler, count=1, lease_s=60, max_attempts=3, exhausted=exhausted)
        worker = asyncio.create_task(workers._work())
        try:
            for _ in range(100):
                with db.session() as session:
                    if batches.get_batch(session, account_id, batch_id).status == "completed":
                        return
                await asyncio.sleep(0.05)
        finally:
            worker.cancel()

    asyncio.run(run_until_done())
    assert ended == [("c0", 5)] and sorted(ran) == ["c1", "c2"]  # ended once, never run again
    with db.session() as session:
        batch = batches.get_batch(session, account_id, batch_id)
        assert batches.request_counts(session, batch).failed == 1
        errors = file_content(session, blobs, account_id, batch.error_file_id).decode().splitlines()
    assert [json.loads(e)["custom_id"] for e in errors] == ["c0"]


def test_a_line_put_back_before_it_started_keeps_its_attempts(store) -> None:  # type: ignore[no-untyped-def]
    db, _, _, _ = store
    for _ in range(5):  # e.g. rate limited again and again: not an attempt that died
        item = leases.take(db.engine, "a", 60, max_attempts=1)
        assert (item.custom_id, item.attempt, item.exhausted) == ("c0", 1, False)
        leases.give_back(db.engine, item, started=False)
    leases.give_back(db.engine, leases.take(db.engine, "a", 60, max_attempts=1))  # this one started
    assert leases.take(db.engine, "a", 60, max_attempts=1).exhausted


def test_batches_page_in_sql_with_ties_and_other_accounts(store) -> None:  # type: ignore[no-untyped-def]
    db, blobs, account_id, first_id = store
    with db.session() as session, session.begin():
        other = create_account(session, "other")
        ids = [first_id]
        for owner in (account_id, account_id, other.id, account_id):
            info = upload(session, blobs, account_id=owner, purpose="batch", filename="in.jsonl",
                          data=line("x").encode())
            batch = batches.create_batch(session, blobs, account_id=owner, key_id="k", dialect="openai",
                                         input_file_id=info.id, endpoint="/v1/chat/completions",
                                         completion_window="24h", metadata=None)
            if owner == account_id:
                ids.append(batch.id)
            else:
                theirs = batch.id
        session.flush()
        # Two created in the same instant: the id breaks the tie, so no page skips or repeats one.
        session.execute(update(Batch).where(Batch.id.in_(ids[1:3])).values(created_at=12345.0))
    with db.session() as session:
        every = [b.id for b in batches.list_batches(session, account_id, limit=100, after=None)[0]]
        assert sorted(every) == sorted(ids) and theirs not in every
        seen, after, more = [], None, True
        while more:
            rows, more = batches.list_batches(session, account_id, limit=1, after=after)
            seen += [b.id for b in rows]
            after = rows[-1].id
        assert seen == every
        assert batches.list_batches(session, account_id, limit=5, after=theirs) == ([], False)
