"""Helpers shared by the node tests (a plain module: the tests import it by basename)."""
from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dreamzero_policy.embodiment import load_embodiment
from dreamzero_policy.observation import CameraFrame, JointObservation

REPO = Path(__file__).resolve().parents[2]
ROBOT = Path(__file__).resolve().parent / "robot.py"
FRANKA_METADATA_KEY = "oxe_droid"


def franka_statistics() -> dict:
    """Plausible DROID-like q01/q99 statistics for the franka_droid state/action keys (arm 7 + gripper 1)."""
    emb = load_embodiment("franka_droid")
    lower, upper = emb.lower, emb.upper
    q = lambda lo, hi: {"q01": [float(v) for v in lo], "q99": [float(v) for v in hi]}  # noqa: E731
    return {
        "state": {"joint_position": q(lower * 0.8, upper * 0.8), "gripper_position": q([0.0], [1.0])},
        "action": {"joint_position": q([-0.3] * 7, [0.3] * 7), "gripper_position": q([0.0], [1.0])},
    }


def write_tiny_checkpoint(directory: Path, metadata: dict | None) -> Path:
    from model_core.factory import save_bundle, tiny_components

    dit, vae, text, image = tiny_components(seed=0)
    save_bundle(directory, dit, vae, text, image, video_hw=(64, 128), metadata=metadata)
    return directory


def wait_until(predicate: Callable[[], object], timeout_s: float, interval_s: float = 0.05):
    """Poll until `predicate()` is truthy; returns its value, or None after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


def feed_sets(buffer, embodiment, start_ns: int, count: int, period_ns: int = 200_000_000,
              hw: tuple[int, int] = (36, 64)) -> int:
    """Add `count` synchronised frame sets (every camera + a joint state, same stamp) to a block buffer; returns the
    stamp after the last one."""
    rng = np.random.default_rng(start_ns % 1000)
    for k in range(count):
        t = start_ns + k * period_ns
        for cam in embodiment.cameras:
            buffer.add_frame(CameraFrame(cam.name, t, rng.integers(0, 255, (*hw, 3), dtype=np.uint8)))
        offset = 0.01 * np.sin(np.arange(len(embodiment.joints)) + k)
        buffer.add_joints(JointObservation(t, embodiment.home + offset, None, embodiment.gripper_open))
    return start_ns + count * period_ns


class Process:
    """A subprocess whose stdout/stderr lines are collected; JSON lines on stdout become events."""

    def __init__(self, args: list[str], env: dict, name: str):
        self.name = name
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=env, text=True, cwd=REPO)
        self.events: queue.Queue = queue.Queue()
        self.lines: list[str] = []
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append(line.rstrip())
            if line.startswith("{"):
                try:
                    self.events.put(json.loads(line))
                except json.JSONDecodeError:
                    pass

    def log(self, last: int = 60) -> str:
        return "\n".join(self.lines[-last:])

    def expect(self, event: str, timeout_s: float = 10.0, **match) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: no {event!r} event within {timeout_s} s; exit={self.proc.poll()}"
                                     f"\n{self.log()}")
            try:
                ev = self.events.get(timeout=min(remaining, 0.2))
            except queue.Empty:
                continue
            if ev.get("event") == event and all(ev.get(k) == v for k, v in match.items()):
                return ev

    def send(self, **command) -> None:
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout_s: float = 10.0, terminate: bool = False) -> int | None:
        if self.proc.poll() is None:
            try:
                if terminate:
                    self.proc.terminate()
                self.proc.stdin.close()
                self.proc.wait(timeout=timeout_s)
            except Exception:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        return self.proc.returncode


def start_robot(embodiment: str | Path, domain: int, env: dict) -> Process:
    robot = Process([sys.executable, str(ROBOT), "--embodiment", str(embodiment), "--domain", str(domain),
                     "--timeout", "300"], env, "robot")
    robot.expect("ready", timeout_s=60)
    return robot


def start_node(env: dict, *args: str) -> Process:
    return Process([sys.executable, "-m", "dreamzero_policy.node", "--middleware", "dds", *args], env, "node")


class Monitor:
    """Raw subscriptions in this process: every message as (receive time ns, CDR bytes) per topic."""

    def __init__(self, mw, topics: dict[str, str]):
        from dreamzero_policy.middleware import QoS
        from dreamzero_policy.middleware.qos import Durability, Reliability

        self.mw = mw
        self._lock = threading.Lock()
        self.received: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
        for topic, msgtype in topics.items():
            qos = QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 10) if topic.endswith("/status") \
                else QoS.RELIABLE.with_depth(100)
            mw.create_subscription(topic, msgtype, lambda data, t=topic: self._add(t, data), qos, raw=True)

    def _add(self, topic: str, data) -> None:
        with self._lock:
            self.received[topic].append((time.time_ns(), bytes(data)))

    def count(self, topic: str) -> int:
        with self._lock:
            return len(self.received[topic])

    def since(self, topic: str, index: int = 0) -> list[tuple[int, bytes]]:
        with self._lock:
            return list(self.received[topic][index:])
