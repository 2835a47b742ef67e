"""Read inputs a few ahead in a background thread, so that decoding overlaps the model."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Read = TypeVar("Read")

# Inputs in flight: enough to hide a slow file, few enough to hold little audio in memory.
DEPTH = 8


def read_ahead(items: Iterable[Item], read: Callable[[Item], Read], depth: int = DEPTH) -> Iterator[Read]:
    """read(item) for each of ``items``, in order, up to ``depth`` items ahead in one background
    thread (depth 0: here, when asked for). ``items`` is drawn lazily, here, as the reader needs
    more. An exception raised by ``read`` is raised here, at its item."""
    if depth == 0:
        yield from map(read, items)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(read, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
