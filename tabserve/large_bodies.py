"""Large V1 requests validated and answered in slices, so 1000 rows do not hold the event loop.

An API worker is one event loop: while it validates a body, nothing else on it runs. The schema
validates a body in one call that holds the loop (and the GIL, so a thread would not free it)
from start to end: 4-8 ms for 1000 churn rows, and every single-row request arriving meanwhile
waits that long. A body over `large_body_bytes` is therefore cut, without parsing it, between
the instances of `{"instances": [...]}`, and validated from its own JSON text
`slice_rows` instances at a time, the loop running other requests between slices (`in_turns`;
the V1 answer is built the same way: 1000 predictions took 1-2 ms).
At most `large_bodies_at_once` large bodies are validated at a time per event loop, the others
waiting their turn without holding it: each turn of the loop then holds at most that many slices,
however many large requests arrive together.

Each slice is a stretch of the body's own bytes, so it parses as it does within the body. A cut
the byte search misplaced (`}, {` inside a text, or between nested objects) leaves the slice
before it with an open string or bracket: not JSON, refused. Slices only take the happy path:
anything else (another shape, a misplaced cut, more than max_instances instances, a value the
schema refuses) hands the whole body to `rows_from_body`, which refuses it exactly as it refuses
a small body: same status, same fields, same reasons. A bad large body costs its check twice.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import weakref
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import TypeVar

from pydantic import ValidationError

from tabserve.instances import rows_from_body, rows_from_request
from tabserve.schemas import Row, request_model
from tabserve.settings import get_settings

T = TypeVar("T")
_SPACE = rb"[ \t\n\r]*"  # JSON's whitespace (\s would also take \f and \v)
_OPEN = re.compile(rb'%s\{%s"instances"%s:%s\[%s' % ((_SPACE,) * 5))
_CLOSE = re.compile(rb"\]%s\}%s" % (_SPACE, _SPACE))
_BETWEEN = re.compile(rb"\}%s,%s\{" % (_SPACE, _SPACE))  # one instance ends, the next begins


class _NotSliceable(Exception):
    """The body is not `{"instances": [...]}` of at most max_instances valid instances."""


async def rows_from_json(model_name: str, body: bytes) -> list[Row]:
    """`rows_from_body(model_name, body)`, the same rows or the same refusal, with the event
    loop free between slices of a large body's instances."""
    settings = get_settings()
    if len(body) <= settings.large_body_bytes:
        return rows_from_body(model_name, body)
    model = request_model(model_name)
    rows: list[Row] = []
    async with _large_body_slots():
        try:
            async for instances in in_turns(_slices(body, settings.slice_rows)):
                request = model.model_validate_json(b'{"instances":[%s]}' % instances)
                rows += rows_from_request(model_name, request)
                if len(rows) > settings.max_instances:
                    raise _NotSliceable
        except (_NotSliceable, ValidationError):
            return rows_from_body(model_name, body)  # names every problem, body-wide
    return rows


async def in_turns(slices: Iterable[T]) -> AsyncIterator[T]:
    """Each slice in a turn of the event loop of its own: the requests that arrived during one
    slice run before the next. One slice costs no extra turn (a single row waits for nothing)."""
    for index, piece in enumerate(slices):
        if index:
            await asyncio.sleep(0)
        yield piece


def row_slices(rows: Sequence[T]) -> Iterator[Sequence[T]]:
    """`rows`, `slice_rows` at a time."""
    size = get_settings().slice_rows
    return (rows[start : start + size] for start in range(0, len(rows), size))


# One semaphore per event loop: an asyncio primitive belongs to the loop that first waits on it.
_SLOTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _large_body_slots() -> asyncio.Semaphore:
    """This event loop's slots for large bodies (`large_bodies_at_once`)."""
    loop = asyncio.get_running_loop()
    slots = _SLOTS.get(loop)
    if slots is None:
        slots = _SLOTS[loop] = asyncio.Semaphore(get_settings().large_bodies_at_once)
    return slots


def _slices(body: bytes, size: int) -> Iterator[bytes]:
    """The JSON text of the body's instances, `size` at a time (fewer if a cut is misplaced)."""
    opening, end = _OPEN.match(body), body.rfind(b"]")  # the last `]` closes the instances
    if opening is None or end < opening.end() or not _CLOSE.fullmatch(body, end):
        raise _NotSliceable
    start = opening.end()
    # Every size-th cut, found as the slices are asked for: a bad first slice costs no search.
    for cut in itertools.islice(_BETWEEN.finditer(body, start, end), size - 1, None, size):
        yield body[start : cut.start() + 1]
        start = cut.end() - 1
    yield body[start:end]
