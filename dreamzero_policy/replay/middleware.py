"""A middleware backend that runs in bag time: the live node's code, fed by a bag instead of a network.

`BagTimeMiddleware` implements `dreamzero_policy.middleware.Middleware` for one PolicyNode:
- `now_ns()` is the bag clock (`BagClock`), which only the replay driver moves (never the wall clock);
- subscriptions are called by `deliver(topic, msg)` (through the base class's callback guard, so a raising callback
  is counted in `callback_errors` like on DDS or rclpy);
- timers fire when the driver asks (`next_timer()`, `fire()`), at their due times on the bag clock, every period
  (like a ROS timer on sim time);
- publishers hand every message to `sink(topic, msgtype, msg, t_ns)` (the replay records them);
- services are kept so the driver can call them (`call_service`); there are no service clients.

Threading: everything happens on the thread that drives the replay, except when a test starts the node's own
session worker (then `publish` may be called from it; the sink must cope).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from dreamzero_policy import params
from dreamzero_policy.middleware.base import (Middleware, MiddlewareError, Publisher, ServiceClient, ServiceServer,
                                              Subscription, Timer)
from dreamzero_policy.middleware.naming import resolve_name
from dreamzero_policy.middleware.qos import QoS


class BagClock:
    """Bag time in integer nanoseconds; it never goes backwards."""

    def __init__(self, start_ns: int = 0):
        self._now = int(start_ns)
        self._lock = threading.Lock()

    def now_ns(self) -> int:
        with self._lock:
            return self._now

    def advance(self, t_ns: int) -> None:
        with self._lock:
            self._now = max(self._now, int(t_ns))


class _Publisher(Publisher):
    def __init__(self, mw: BagTimeMiddleware, topic: str, msgtype: str, qos: QoS):
        self.mw, self.topic, self.msgtype, self.qos = mw, topic, msgtype, qos
        self.destroyed = False

    def publish(self, msg: Any) -> None:
        self.mw._emit(self, msg)

    def publish_raw(self, cdr) -> None:
        from dreamzero_policy import msgs

        self.mw._emit(self, msgs.deserialize(bytes(cdr), self.msgtype))

    def subscription_count(self) -> int:
        return 1 if self.mw.sink is not None else 0

    def destroy(self) -> None:
        self.destroyed = True


class _Subscription(Subscription):
    def __init__(self, topic: str, msgtype: str, callback: Callable[[Any], None], qos: QoS, raw: bool):
        self.topic, self.msgtype, self.callback, self.qos, self.raw = topic, msgtype, callback, qos, raw
        self.destroyed = False

    def publisher_count(self) -> int:
        return 1

    def destroy(self) -> None:
        self.destroyed = True


class _Timer(Timer):
    def __init__(self, period_s: float, callback: Callable[[], None], start_ns: int, order: int):
        self.period_s, self.callback = period_s, callback
        self.period_ns = max(1, round(period_s * 1e9))
        self.due_ns = start_ns + self.period_ns
        self.order = order  # creation order breaks ties between timers due at the same time
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    destroy = cancel


class _Service(ServiceServer):
    def __init__(self, name: str, srvtype: str, handler: Callable[[Any], Any]):
        self.name, self.srvtype, self.handler = name, srvtype, handler


class BagTimeMiddleware(Middleware):
    """See the module docstring. `sink(topic, msgtype, msg, t_ns)` receives every published message."""

    backend = "bag_time"

    # A bag with a long silence (hours between two messages) would otherwise fire millions of control ticks.
    MAX_CATCH_UP_TICKS = 10_000

    def __init__(self, clock: BagClock, node_name: str = params.NODE_NAME, namespace: str = "/",
                 sink: Callable[[str, str, Any, int], None] | None = None):
        super().__init__()
        self.clock, self.node_name, self.namespace, self.domain_id = clock, node_name, namespace, 0
        self.sink = sink
        self.subscriptions: dict[str, list[_Subscription]] = {}
        self.publishers: list[_Publisher] = []
        self.timers: list[_Timer] = []
        self.services: dict[str, _Service] = {}
        self.ticks_skipped = 0
        self._closed = False
        self._orders = 0

    def resolve(self, name: str) -> str:
        return resolve_name(name, self.node_name, self.namespace)

    # --- entities ---
    def create_publisher(self, topic: str, msgtype: str, qos: QoS) -> Publisher:
        self._check_open()
        pub = _Publisher(self, self.resolve(topic), msgtype, qos)
        self.publishers.append(pub)
        return pub

    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None], qos: QoS,
                            raw: bool = False) -> Subscription:
        self._check_open()
        sub = _Subscription(self.resolve(topic), msgtype, callback, qos, raw)
        self.subscriptions.setdefault(sub.topic, []).append(sub)
        return sub

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Timer:
        self._check_open()
        if not period_s > 0:
            raise ValueError(f"timer period must be > 0 s, got {period_s}")
        timer = _Timer(period_s, callback, self.clock.now_ns(), self._orders)
        self._orders += 1
        self.timers.append(timer)
        return timer

    def create_service(self, name: str, srvtype: str, handler: Callable[[Any], Any]) -> ServiceServer:
        self._check_open()
        service = _Service(self.resolve(name), srvtype, handler)
        self.services[service.name] = service
        return service

    def create_client(self, name: str, srvtype: str) -> ServiceClient:
        raise MiddlewareError("the bag-time middleware has no service clients (replay feeds a node, it calls none)")

    # --- time and execution ---
    def now_ns(self) -> int:
        return self.clock.now_ns()

    def spin_once(self, timeout_s: float) -> int:
        return 0  # the replay driver runs every callback itself

    def shutdown(self) -> None:
        self._closed = True
        for timer in self.timers:
            timer.cancel()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- what the replay driver calls ---
    def subscribed(self, topic: str) -> bool:
        return any(not s.destroyed for s in self.subscriptions.get(topic, ()))

    def deliver(self, topic: str, msg: Any, raw: bytes | None = None) -> int:
        """Call every live subscription of `topic` with `msg` (raw ones with its CDR bytes); returns how many."""
        called = 0
        for sub in list(self.subscriptions.get(topic, ())):
            if sub.destroyed:
                continue
            if sub.raw and raw is None:
                from dreamzero_policy import msgs

                raw = msgs.serialize(msg, sub.msgtype)
            self._run_callback(f"subscription {topic}", sub.callback, raw if sub.raw else msg)
            called += 1
        return called

    def next_timer(self) -> _Timer | None:
        """The live timer due first (ties: the one created first)."""
        live = [t for t in self.timers if not t.cancelled]
        self.timers = live
        return min(live, key=lambda t: (t.due_ns, t.order), default=None)

    def fire(self, timer: _Timer) -> None:
        """Run `timer` at its due time (the clock moves there) and schedule its next period."""
        self.clock.advance(timer.due_ns)
        timer.due_ns += timer.period_ns
        self._run_callback("timer", timer.callback)

    def skip_ahead(self, t_ns: int) -> None:
        """After a long silence, keep only the last MAX_CATCH_UP_TICKS periods of each timer before `t_ns` (the
        skipped ticks are counted in `ticks_skipped`)."""
        for timer in self.timers:
            behind = (t_ns - timer.due_ns) // timer.period_ns
            if not timer.cancelled and behind > self.MAX_CATCH_UP_TICKS:
                skip = behind - self.MAX_CATCH_UP_TICKS
                timer.due_ns += skip * timer.period_ns
                self.ticks_skipped += skip

    def run_timers_until(self, t_ns: int) -> None:
        """Fire every timer due at or before `t_ns`, in time order (after `skip_ahead`)."""
        self.skip_ahead(t_ns)
        while (timer := self.next_timer()) is not None and timer.due_ns <= t_ns:
            self.fire(timer)

    def call_service(self, name: str, request: Any) -> Any:
        service = self.services.get(self.resolve(name))
        if service is None:
            raise MiddlewareError(f"no service {name!r}; offered: {sorted(self.services)}")
        return service.handler(request)

    # --- internals ---
    def _emit(self, pub: _Publisher, msg: Any) -> None:
        if self._closed:
            raise MiddlewareError(f"publish on {pub.topic} after shutdown")
        if pub.destroyed:
            raise MiddlewareError(f"publish on destroyed publisher {pub.topic}")
        if self.sink is not None:
            self.sink(pub.topic, pub.msgtype, msg, self.clock.now_ns())

    def _check_open(self) -> None:
        if self._closed:
            raise MiddlewareError("the bag-time middleware is shut down")
