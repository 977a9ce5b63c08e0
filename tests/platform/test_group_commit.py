"""`StepQueue`: a lone step goes at once; steps asked for while one is on the network go together
in the next batch; each caller gets its own answer, even when it was cancelled meanwhile."""

from __future__ import annotations

import threading
import time

import anyio
import pytest

from glmaas.platform.group_commit import StepQueue


class Recorder:
    """A batch step that takes `delay` seconds, records its batches, and fails the items it is
    told to fail (and the whole batch when asked)."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.batches: list[list[int]] = []
        self.threads: set[int] = set()
        self.fail_items: set[int] = set()
        self.fail_batch = False

    def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(list(items))
        self.threads.add(threading.get_ident())
        time.sleep(self.delay)
        if self.fail_batch:
            raise ConnectionError("the store went away")
        return [ValueError(f"item {i} refused") if i in self.fail_items else i * 10 for i in items]


def test_a_lone_step_runs_at_once_on_a_worker_thread() -> None:
    step = Recorder(delay=0.0)
    queue = StepQueue(step)

    async def main() -> int:
        return await queue.run(7)

    assert anyio.run(main) == 70
    assert step.batches == [[7]]
    assert threading.get_ident() not in step.threads


def test_steps_asked_for_meanwhile_go_together_in_the_next_batch() -> None:
    step = Recorder(delay=0.1)
    queue = StepQueue(step)
    results: dict[int, int] = {}

    async def one(i: int) -> None:
        results[i] = await queue.run(i)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            await anyio.sleep(0.02)  # 0 is on the network now
            for i in range(1, 6):
                tg.start_soon(one, i)

    anyio.run(main)
    assert step.batches == [[0], [1, 2, 3, 4, 5]]
    assert results == {i: i * 10 for i in range(6)}


def test_steps_asked_for_at_the_same_moment_go_together_within_max_batch() -> None:
    step = Recorder(delay=0.05)
    queue = StepQueue(step, max_batch=3)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(8):
                tg.start_soon(queue.run, i)

    anyio.run(main)
    # The first waits for the tasks that are ready alongside it before it sends its batch.
    assert step.batches == [[0, 1, 2], [3, 4, 5], [6, 7]]


def test_each_caller_gets_its_own_refusal_and_a_failed_batch_fails_all_of_its_callers() -> None:
    step = Recorder(delay=0.05)
    step.fail_items = {2}
    queue = StepQueue(step)
    answers: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            answers[i] = await queue.run(i)
        except Exception as exc:  # noqa: BLE001 - recorded for the assertions
            answers[i] = exc

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for i in range(4):
                tg.start_soon(one, i)

    anyio.run(main)
    assert answers[0] == 0 and answers[1] == 10 and answers[3] == 30
    assert isinstance(answers[2], ValueError)

    step.fail_batch = True
    answers.clear()
    anyio.run(main)
    assert all(isinstance(a, ConnectionError) for a in answers.values()) and len(answers) == 4
    # The queue is free again once a batch has failed.
    step.fail_batch = False
    assert anyio.run(queue.run, 5) == 50


@pytest.mark.parametrize("cancelled", [0, 1])
def test_a_step_asked_for_runs_to_its_end_even_if_its_caller_is_cancelled(cancelled: int) -> None:
    """0 leads the first batch; 1 waits for the next one, which it leads."""
    step = Recorder(delay=0.1)
    queue = StepQueue(step)
    scopes: dict[int, anyio.CancelScope] = {}
    finished: dict[int, int] = {}

    async def one(i: int) -> None:
        with anyio.CancelScope() as scopes[i]:
            finished[i] = await queue.run(i)

    async def main() -> None:
        with anyio.fail_after(5):
            await together()

    async def together() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(one, 0)
            await anyio.sleep(0.02)
            tg.start_soon(one, 1)
            tg.start_soon(one, 2)
            await anyio.sleep(0.02)
            scopes[cancelled].cancel()

    anyio.run(main)
    # The cancelled caller's step ran, and so did the others': nobody was left waiting.
    assert step.batches == [[0], [1, 2]]
    assert {i: finished[i] for i in finished if i != cancelled} == {i: i * 10 for i in range(3) if i != cancelled}
