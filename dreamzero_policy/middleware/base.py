"""The backend-independent middleware interface (what the node and the sim code against).

Threading contract (both backends):
- Callbacks of subscriptions, timers and services run on ONE executor thread: the thread that calls `spin()` /
  `spin_once()`, or the thread started by `spin_background()`. They never run concurrently with each other, so a
  callback must not block for long (hand heavy work, e.g. inference, to a worker thread).
- Only one thread may spin at a time; a second concurrent `spin*` raises `MiddlewareError`.
- `create_publisher`, `create_subscription`, `create_timer`, `create_service`, `create_client`, `publish*` and
  `now_ns` may be called from any thread, before or after spinning starts.
- `ServiceClient.call` blocks the calling thread; never call it from a callback of the same middleware (the reply
  could need the executor that the callback is blocking).
- A callback that raises is logged (logger `dreamzero_policy.middleware`; with traceback for the first 3 failures of
  each topic/timer/service, then every 100th) and counted in `callback_errors`; the executor keeps running.

Messages are rosbags dataclasses of types held by `dreamzero_policy.msgs.typestore()`; on the wire they are CDR bytes.
"""
from __future__ import annotations

import abc
import logging
import threading
from typing import Any, Callable

from .qos import QoS

log = logging.getLogger("dreamzero_policy.middleware")


class MiddlewareError(RuntimeError):
    """A middleware operation failed (DDS/rcl error, wrong use of the executor, closed middleware)."""


class Publisher(abc.ABC):
    topic: str      # fully qualified ROS topic name
    msgtype: str    # e.g. "sensor_msgs/msg/JointState"
    qos: QoS

    @abc.abstractmethod
    def publish(self, msg: Any) -> None:
        """Serialize a rosbags message of `msgtype` to CDR and send it."""

    @abc.abstractmethod
    def publish_raw(self, cdr: bytes | bytearray | memoryview) -> None:
        """Send CDR bytes (4-byte encapsulation header `00 01 00 00` + XCDR1 little-endian body) as they are."""

    @abc.abstractmethod
    def subscription_count(self) -> int:
        """Number of matched subscriptions (readers) right now."""


class Subscription(abc.ABC):
    topic: str
    msgtype: str
    qos: QoS
    raw: bool

    @abc.abstractmethod
    def publisher_count(self) -> int:
        """Number of matched publishers (writers) right now."""


class Timer(abc.ABC):
    period_s: float

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop the timer; its callback will not run again."""


class ServiceServer(abc.ABC):
    name: str
    srvtype: str


class ServiceClient(abc.ABC):
    name: str
    srvtype: str

    @abc.abstractmethod
    def wait_for_service(self, timeout_s: float) -> bool:
        """True once a server is reachable (request and reply paths matched), False after `timeout_s`."""

    @abc.abstractmethod
    def call(self, request: Any, timeout_s: float) -> Any:
        """Send `request` (rosbags `<srvtype>_Request`) and return the `<srvtype>_Response`.

        Raises TimeoutError when no reply came within `timeout_s`. Blocks the calling thread.
        """


class Middleware(abc.ABC):
    """One ROS 2 node's worth of pub/sub, timers and services on one executor thread (see the module docstring)."""

    backend: str
    node_name: str
    namespace: str
    domain_id: int

    def __init__(self) -> None:
        self.callback_errors = 0
        self._errors_by_source: dict[str, int] = {}
        self._bg_thread: threading.Thread | None = None
        self._bg_stop: threading.Event | None = None

    # -- entities ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_publisher(self, topic: str, msgtype: str, qos: QoS) -> Publisher: ...

    @abc.abstractmethod
    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None], qos: QoS,
                            raw: bool = False) -> Subscription:
        """`callback(msg)` with a rosbags message, or `callback(data: bytes)` (the CDR bytes) when `raw`."""

    @abc.abstractmethod
    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Timer: ...

    @abc.abstractmethod
    def create_service(self, name: str, srvtype: str, handler: Callable[[Any], Any]) -> ServiceServer:
        """`handler(request) -> response` (rosbags `<srvtype>_Request` -> `<srvtype>_Response`), on the executor."""

    @abc.abstractmethod
    def create_client(self, name: str, srvtype: str) -> ServiceClient: ...

    # -- time and execution -------------------------------------------------------------------------------------
    @abc.abstractmethod
    def now_ns(self) -> int:
        """Current ROS time in integer nanoseconds (system clock unless the backend uses sim time)."""

    @abc.abstractmethod
    def spin_once(self, timeout_s: float) -> int:
        """Wait up to `timeout_s` for work, run every ready callback once; returns how many callbacks ran."""

    @abc.abstractmethod
    def shutdown(self) -> None:
        """Stop spinning, destroy all entities. Idempotent."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool: ...

    def spin(self, stop: threading.Event | None = None) -> None:
        """Run the executor on the calling thread until `stop` is set or `shutdown()` is called."""
        while not self.closed and not (stop is not None and stop.is_set()):
            self.spin_once(0.1)

    def spin_background(self, name: str = "dreamzero-mw-executor") -> threading.Thread:
        """Start the executor thread (a daemon running `spin()`); `shutdown()` stops and joins it."""
        if self._bg_thread is not None and self._bg_thread.is_alive():
            raise MiddlewareError("spin_background(): the executor thread is already running")
        self._bg_stop = threading.Event()
        self._bg_thread = threading.Thread(target=self.spin, args=(self._bg_stop,), name=name, daemon=True)
        self._bg_thread.start()
        return self._bg_thread

    def _stop_background(self, timeout_s: float = 5.0) -> None:
        if self._bg_stop is not None:
            self._bg_stop.set()
        t = self._bg_thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout_s)
            if t.is_alive():
                log.warning("executor thread did not stop within %.1f s (a callback is blocking)", timeout_s)
        self._bg_thread = None

    def _run_callback(self, what: str, fn: Callable, *args) -> bool:
        try:
            fn(*args)
            return True
        except Exception:
            self.callback_errors += 1
            n = self._errors_by_source[what] = self._errors_by_source.get(what, 0) + 1
            if n <= 3 or n % 100 == 0:
                log.exception("callback for %s raised (failure #%d there); the executor continues", what, n)
            return False

    def __enter__(self) -> "Middleware":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
