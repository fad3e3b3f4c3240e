"""Helpers shared by the middleware tests and fixtures (a plain module: conftest.py imports it)."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).resolve().parent / "peer.py"


def wait_until(predicate, timeout_s: float, interval_s: float = 0.01) -> bool:
    """Poll `predicate()` until it is truthy (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def endpoints(dp, builtin_topic, topic_name: str, timeout_s: float = 10.0) -> list:
    """The endpoints on DDS topic `topic_name` that the builtin topic (DCPSPublication/-Subscription) of participant
    `dp` discovers within `timeout_s`; asserts there is at least one."""
    from cyclonedds.builtin import BuiltinDataReader

    reader = BuiltinDataReader(dp, builtin_topic)
    found = []

    def poll():
        found.extend(s for s in reader.take(N=64) if s.topic_name == topic_name)
        return bool(found)

    assert wait_until(poll, timeout_s, 0.05), f"no endpoint on {topic_name} discovered"
    return found


class Peer:
    """A peer.py subprocess; `expect()` reads its JSON-line events with a timeout."""

    def __init__(self, mode: str, domain: int, env: dict, timeout_s: float = 40.0):
        self.mode = mode
        self.proc = subprocess.Popen(
            [sys.executable, str(PEER), mode, "--domain", str(domain), "--timeout", str(timeout_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True, cwd=REPO)
        self.events: queue.Queue = queue.Queue()
        self._stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=lambda: self._stderr.extend(self.proc.stderr), daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except json.JSONDecodeError:
                self.events.put({"event": "text", "line": line.rstrip()})

    def expect(self, event: str, timeout_s: float = 10.0, **match) -> dict:
        """The next event named `event` (with the given field values); other events are skipped."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"peer {self.mode}: no {event!r} event {match or ''} within {timeout_s} s; "
                                     f"exit={self.proc.poll()} stderr:\n{''.join(self._stderr)[-3000:]}")
            try:
                ev = self.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                return ev

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()          # the peer exits on stdin EOF
                self.proc.wait(timeout=5)
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
