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
- Actions: `ActionClient.send_goal` / `cancel` never block (any thread); the server's answers update the
  `ClientGoalHandle` and call its callbacks on the executor thread. A `ServerGoalHandle` may be finished
  (`succeed`/`abort`/`canceled`) or give feedback from any thread.
- A callback that raises is logged (logger `dreamzero_policy.middleware`; with traceback for the first 3 failures of
  each topic/timer/service, then every 100th) and counted in `callback_errors`; the executor keeps running.

Messages are rosbags dataclasses of types held by `dreamzero_policy.msgs.typestore()`; on the wire they are CDR bytes.
"""
from __future__ import annotations

import abc
import enum
import logging
import threading
import time
import uuid
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


class GoalStatus(enum.IntEnum):
    """action_msgs/msg/GoalStatus status values."""

    UNKNOWN = 0
    ACCEPTED = 1
    EXECUTING = 2
    CANCELING = 3
    SUCCEEDED = 4
    CANCELED = 5
    ABORTED = 6

    @property
    def terminal(self) -> bool:
        return self >= GoalStatus.SUCCEEDED


class ClientGoalHandle:
    """One goal sent by an `ActionClient`. The backend updates it on the executor thread:

    accepted  None until the server answered, then True / False (rejected: the goal is done)
    status    the newest GoalStatus known (from the status topic and the result)
    result    the rosbags `<action>_Result` once the goal reached a terminal status
    `on_done(handle)` runs once when the goal is done (rejected or terminal); `on_feedback(feedback)` per feedback.
    """

    def __init__(self, on_done: Callable[["ClientGoalHandle"], None] | None = None,
                 on_feedback: Callable[[Any], None] | None = None):
        self.goal_id = uuid.uuid4().bytes
        self.accepted: bool | None = None
        self.status = GoalStatus.UNKNOWN
        self.result: Any = None
        self.cancel_requested = False
        self.on_done, self.on_feedback = on_done, on_feedback
        self._done = threading.Event()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout_s: float) -> bool:
        """Block until the goal is done (True) or `timeout_s` passes (False). Never call it on the executor."""
        return self._done.wait(timeout_s)

    def _finish(self, mw: "Middleware", what: str, accepted: bool, status: GoalStatus, result: Any) -> None:
        """Mark done and run on_done (executor thread, callback guard); later calls are ignored."""
        if self.done:
            return
        self.accepted, self.status, self.result = accepted, GoalStatus(status), result
        self._done.set()
        if self.on_done is not None:
            mw._run_callback(what, self.on_done, self)

    def __repr__(self) -> str:
        return f"<goal {self.goal_id.hex()[:8]} accepted={self.accepted} status={self.status.name}>"


class ActionClient(abc.ABC):
    name: str           # fully qualified action name
    action_type: str    # e.g. "control_msgs/action/FollowJointTrajectory"

    @abc.abstractmethod
    def server_is_ready(self) -> bool:
        """True while an action server is matched on every service and topic of the action."""

    def wait_for_server(self, timeout_s: float) -> bool:
        """True once `server_is_ready()`, False after `timeout_s`. Blocks the calling thread."""
        deadline = time.monotonic() + timeout_s
        while not self.server_is_ready():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    @abc.abstractmethod
    def send_goal(self, goal: Any, on_done: Callable[[ClientGoalHandle], None] | None = None,
                  on_feedback: Callable[[Any], None] | None = None) -> ClientGoalHandle:
        """Send `goal` (rosbags `<action>_Goal`) without waiting; the result is requested once it is accepted.

        Raises MiddlewareError when no server is ready (the goal would go nowhere)."""

    @abc.abstractmethod
    def cancel(self, handle: ClientGoalHandle) -> None:
        """Ask the server to cancel the goal (without waiting); a done goal is left alone."""

    @abc.abstractmethod
    def destroy(self) -> None:
        """Release the client's endpoints."""


class ServerGoalHandle(abc.ABC):
    """One goal an `ActionServer` accepted: `goal` (rosbags `<action>_Goal`), `goal_id` (16 bytes), `status`.

    The owner finishes it exactly once with `succeed`, `abort` or `canceled` (any thread); later calls are ignored.
    """

    goal_id: bytes
    goal: Any
    status: GoalStatus

    @property
    def active(self) -> bool:
        return not self.status.terminal

    @abc.abstractmethod
    def publish_feedback(self, feedback: Any) -> None: ...

    @abc.abstractmethod
    def succeed(self, result: Any) -> None: ...

    @abc.abstractmethod
    def abort(self, result: Any) -> None: ...

    @abc.abstractmethod
    def canceled(self, result: Any) -> None: ...


class ActionServer(abc.ABC):
    name: str
    action_type: str


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

    def create_action_client(self, name: str, action_type: str) -> ActionClient:
        """A client of action `name` (e.g. `/arm/follow_joint_trajectory`, type `pkg/action/Action`)."""
        raise MiddlewareError(f"the {self.backend} middleware has no action clients (action {name})")

    def create_action_server(self, name: str, action_type: str, on_goal: Callable[[ServerGoalHandle], bool],
                             on_cancel: Callable[[ServerGoalHandle], bool] | None = None) -> ActionServer:
        """Serve action `name`. On the executor thread: `on_goal(handle)` -> True accepts the goal (EXECUTING; the
        owner finishes it later), False rejects it; `on_cancel(handle)` -> True moves it to CANCELING (the owner
        then calls `handle.canceled(result)`), False refuses; without `on_cancel` every cancel is refused."""
        raise MiddlewareError(f"the {self.backend} middleware has no action servers (action {name})")

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
