"""tabserve.admission.Admission: the in-flight limit, the bounded queue, the hand-over order."""

from __future__ import annotations

import asyncio

import pytest

from tabserve.admission import Admission, MessageBudget, Overloaded


async def _hold(admission: Admission, name: str, order: list[str], release: asyncio.Event) -> None:
    async with admission:
        order.append(name)
        await release.wait()


def test_over_in_flight_plus_queued_is_refused_at_once_and_the_queue_is_served_in_order() -> None:
    async def scenario() -> tuple[list[str], bool]:
        admission, order, release = Admission(max_in_flight=2, max_queued=2), [], asyncio.Event()
        holders = [asyncio.create_task(_hold(admission, n, order, release)) for n in "abcd"]
        await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):
            await admission.__aenter__()
        running_before_release = order.copy()
        release.set()
        await asyncio.gather(*holders)
        return running_before_release + order, admission._free == 2

    order, all_free = asyncio.run(scenario())

    assert order == ["a", "b", "a", "b", "c", "d"]
    assert all_free


def test_a_waiter_that_gives_up_leaves_its_place_and_takes_no_slot() -> None:
    async def scenario() -> list[str]:
        admission, order, release = Admission(max_in_flight=1, max_queued=2), [], asyncio.Event()
        first = asyncio.create_task(_hold(admission, "a", order, release))
        quitter = asyncio.create_task(_hold(admission, "b", order, release))
        stayer = asyncio.create_task(_hold(admission, "c", order, release))
        await asyncio.sleep(0.01)
        quitter.cancel()
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(first, stayer)
        assert admission._free == 1
        return order

    assert asyncio.run(scenario()) == ["a", "c"]


def test_the_message_budget_refuses_what_would_exceed_it_and_frees_on_exit() -> None:
    """gRPC's per-worker budget of request bytes held at once (tabserve/protocols/grpc)."""
    budget = MessageBudget(limit_bytes=10)
    with budget.hold(6):
        with pytest.raises(Overloaded), budget.hold(5):
            pass
        with budget.hold(4):
            assert budget.held_bytes == 10
    assert budget.held_bytes == 0
    with budget.hold(
        50
    ):  # alone, a message over the budget is still taken (max_body_bytes caps it)
        pass
