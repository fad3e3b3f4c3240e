"""Helpers shared by the sim tests (a plain module: the tests import it by basename)."""
from __future__ import annotations

import queue
import signal
import time


def wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def stop_sim(process) -> str:
    """SIGINT to a `python -m sim.serve` process; asserts a clean exit and returns its output."""
    process.send_signal(signal.SIGINT)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 0, output
    return output


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
