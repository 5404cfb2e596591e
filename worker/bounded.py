"""Bounded hand-offs between pipeline stages: a closable queue and a budget of pixels.

Both can be aborted, which wakes every thread waiting on them with `Aborted`,
so that one failing stage stops the others instead of leaving them blocked.
"""

import threading
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Aborted(Exception):
    """The pipeline was stopped (a stage failed); the waiting stage should return."""


class Channel(Generic[T]):
    """A FIFO of at most `capacity` items between two stages; `close` marks the end."""

    def __init__(self, capacity: int) -> None:
        self._capacity = max(1, capacity)
        self._items: deque[T] = deque()
        self._closed = self._aborted = False
        self._changed = threading.Condition()

    def put(self, item: T) -> None:
        """Append `item`, waiting while the channel is full."""
        with self._changed:
            self._changed.wait_for(lambda: self._aborted or len(self._items) < self._capacity)
            if self._aborted:
                raise Aborted
            self._items.append(item)
            self._changed.notify_all()

    def close(self) -> None:
        """No more items will come: `__iter__` ends once the channel is drained."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def abort(self) -> None:
        with self._changed:
            self._aborted = True
            self._changed.notify_all()

    def __iter__(self) -> Iterator[T]:
        """Items in order until the channel is closed and empty; raises Aborted."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._aborted or self._items or self._closed)
                if self._aborted:
                    raise Aborted
                if not self._items:
                    return
                item = self._items.popleft()
                self._changed.notify_all()
            yield item


class PixelBudget:
    """At most `limit` decoded pixels held at once, granted strictly in ticket order.

    Granting in order means an image never waits behind images that come
    after it in the pipeline, so whatever holds the budget is ahead of the
    waiter and will release it. A request larger than `limit // 2` is granted
    as `limit // 2`, so that one always fits beside a group that holds less
    than half the budget.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held = 0
        self._next_ticket = 0
        self._aborted = False
        self._changed = threading.Condition()

    def take(self, ticket: int, pixels: int) -> int:
        """Wait for `ticket`'s turn and room for `pixels`; returns the pixels granted."""
        granted = min(pixels, self.limit // 2)
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._aborted
                    or (ticket == self._next_ticket and self._held + granted <= self.limit)
                )
            )
            if self._aborted:
                raise Aborted
            self._held += granted
            self._next_ticket += 1
            self._changed.notify_all()
        return granted

    def give_back(self, pixels: int) -> None:
        with self._changed:
            self._held -= pixels
            self._changed.notify_all()

    def abort(self) -> None:
        with self._changed:
            self._aborted = True
            self._changed.notify_all()

    @property
    def held(self) -> int:
        return self._held
