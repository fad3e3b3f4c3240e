"""Helpers shared by the sim tests (a plain module: the tests import it by basename)."""
from __future__ import annotations

import queue
import time


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


class Latest:
    """Keeps every message of a topic (callbacks run on the middleware's executor thread)."""

    def __init__(self):
        self.items: queue.SimpleQueue = queue.SimpleQueue()
        self.all: list = []

    def __call__(self, msg) -> None:
        self.items.put(msg)

    def drain(self) -> list:
        while not self.items.empty():
            self.all.append(self.items.get())
        return self.all
