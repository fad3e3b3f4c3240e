"""Built-in ROS 2 wire-compatible backend on Cyclone DDS (the `cyclonedds` PyPI package; no ROS install needed).

What a stock ROS 2 graph on rmw_cyclonedds_cpp sees (docs: ROBOTS_AND_ROS.md section 3):
- topic `/foo` is the DDS topic `rt/foo`, type `pkg/msg/T` is the DDS type `pkg::msg::dds_::T_`; the announced
  XTypes type object has the same structure rmw_cyclonedds describes (see dds_types.py);
- payloads are XCDR1 little endian with the encapsulation header `00 01 00 00`: exactly the bytes rosbags'
  `serialize_cdr` produces, written and taken unchanged;
- QoS as in qos.py (data representation XCDR1 only, as ROS 2 uses).

Fast path: the stock binding turns `sequence<uint8>` into a Python list (~80 ms for a 640x480 image). This backend
never lets the binding (de)serialize: it hands rosbags' CDR bytes to `ddspy_write` (the binding's serialized-data
write that the stock `DataWriter.write` also ends in) and gets the received CDR bytes from `ddspy_take`. rosbags
decodes `uint8[]` into a numpy view of those bytes. The binding's C layer still validates every payload against the
topic type (Cyclone's `dds_stream_normalize`) when it is written and when it arrives: a payload that does not match
the type fails the write (MiddlewareError) or is dropped on receipt.

`ddspy_write` holds the GIL while Cyclone writes (about 0.1 ms for a 640x480 image). A reliable writer whose
history is full of unacknowledged data (samples above Cyclone's 500 kB high-water mark, i.e. big messages to a
stalled reliable reader) blocks up to max_blocking_time (100 ms) inside that call; publish big messages (images)
with QoS.SENSOR_DATA, as ROS 2 does, and this never happens.

Services follow rmw_cyclonedds_cpp's request/reply format (rmw_node.cpp / serdata.cpp): service `/name` uses the DDS
topics `rq/nameRequest` (type `pkg::srv::dds_::S_Request_`) and `rr/nameReply` (`pkg::srv::dds_::S_Response_`),
reliable, volatile, keep last 10. Each payload is the CDR stream of the message with a request header in front of
the body, right after the 4-byte encapsulation header: `uint64 guid, int64 seq` (16 bytes, so the body keeps its
8-byte alignment). A client puts its request writer's instance handle in `guid` and a per-call sequence number in
`seq`; the server echoes both in the reply; clients drop replies with another guid. Client endpoints carry USER_DATA
`clientid=<id>;`, server endpoints `serviceid=<id>;`; before replying, the server waits up to 100 ms until it has
matched the reply reader of the requesting client (as rmw_cyclonedds does). This was written from rmw_cyclonedds'
source; it is tested between two processes of this backend, not against a real ROS 2 install (none here).
Actions (dds_actions.py) are three such services and two topics, as rcl_action builds them.

Not done: the `ros_discovery_info` topic (rmw_dds_common/ParticipantEntitiesInfo). ROS 2 tools build the topic graph
from DDS discovery, so `ros2 topic list/echo/pub` should see and use our topics, but `ros2 node list` will not show
this node. Interoperability is verified here against the stock cyclonedds binding (hand-written IDL types on rt/...),
not against a ROS 2 install (none on the development machine); tests/middleware/test_mw_rclpy.py checks it where
rclpy exists.

Networking: Cyclone reads its configuration from CYCLONEDDS_URI when the first participant of a domain is created.
`LOOPBACK_CONFIG` is a loopback-only configuration (tests and benchmarks use it).
"""
from __future__ import annotations

import itertools
import os
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cyclonedds.core import DDSException, Entity, GuardCondition, InstanceState, ReadCondition, SampleState, \
    ViewState, WaitSet
from cyclonedds.domain import DomainParticipant
from cyclonedds.pub import DataWriter
from cyclonedds.qos import Policy, Qos
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic
from cyclonedds._clayer import ddspy_take, ddspy_write

from .. import msgs
from .base import (ActionClient, ActionServer, Middleware, MiddlewareError, Publisher, ServerGoalHandle,
                   ServiceClient, ServiceServer, Subscription, Timer, log)
from .dds_types import idl_struct
from .naming import dds_service_topics, dds_topic_name, resolve_name
from .qos import QoS

LOOPBACK_CONFIG = Path(__file__).resolve().parent / "cyclonedds_loopback.xml"

_ANY_STATE = SampleState.Any | ViewState.Any | InstanceState.Any
_TAKE_BATCH = 32              # samples taken per ddspy_take call
_RELIABLE_BLOCKING_NS = 100_000_000   # max_blocking_time of reliable writers (ROS 2's default, 100 ms)
_REQ_HEADER = struct.Struct("<Qq")    # rmw_cyclonedds cdds_request_header_t {uint64 guid; int64 seq}, little endian
_CDR_LE = b"\x00\x01"


def loopback_uri() -> str:
    """A CYCLONEDDS_URI value selecting the loopback-only configuration."""
    return LOOPBACK_CONFIG.as_uri()


def resolve_domain_id(domain_id: int | None) -> int:
    """`domain_id`, else $ROS_DOMAIN_ID, else 0; ROS 2 / DDS domain ids are 0..232 (UDP port mapping)."""
    if domain_id is None:
        env = os.environ.get("ROS_DOMAIN_ID", "").strip()
        try:
            domain_id = int(env) if env else 0
        except ValueError:
            raise MiddlewareError(f"ROS_DOMAIN_ID must be an integer 0..232, got {env!r}") from None
    if not isinstance(domain_id, int) or not 0 <= domain_id <= 232:
        raise MiddlewareError(f"domain_id must be an integer 0..232, got {domain_id!r}")
    return domain_id


def _dds_qos(qos: QoS, user_data: bytes | None = None) -> Qos:
    policies = [
        Policy.Reliability.Reliable(max_blocking_time=_RELIABLE_BLOCKING_NS) if qos.reliable
        else Policy.Reliability.BestEffort,
        Policy.Durability.TransientLocal if qos.transient_local else Policy.Durability.Volatile,
        Policy.History.KeepLast(qos.depth),
        Policy.DataRepresentation(use_cdrv0_representation=True),
    ]
    if user_data:
        policies.append(Policy.Userdata(data=user_data))
    return Qos(*policies)


def _delete(entity: Entity | None) -> None:
    """Delete a DDS entity now (the binding otherwise deletes it when the Python object is collected)."""
    ref = getattr(entity, "_ref", None)
    if ref is not None and Entity._entities.get(ref) is entity:
        del Entity._entities[ref]
        entity._delete(ref)


def _check_cdr(cdr) -> None:
    if len(cdr) < 4 or bytes(cdr[:2]) != _CDR_LE:
        raise ValueError(f"publish_raw expects XCDR1 little-endian CDR starting 00 01 00 00, got {bytes(cdr[:4])!r}")


def _user_data_key(qos: Qos | None, key: str) -> str | None:
    """Value of `key=` in an rmw-style USER_DATA `k1=v1;k2=v2;`, or None."""
    if qos is None:
        return None
    ud = qos[Policy.Userdata]
    if ud is None:
        return None
    for item in ud.data.decode("utf-8", "replace").split(";"):
        k, sep, v = item.partition("=")
        if sep and k == key:
            return v
    return None


class _DdsPublisher(Publisher):
    def __init__(self, mw: "DdsMiddleware", topic: str, msgtype: str, qos: QoS):
        self.topic, self.msgtype, self.qos = topic, msgtype, qos
        self._mw = mw
        self._writer = DataWriter(mw._dp, mw._topic(dds_topic_name(topic), msgtype), qos=_dds_qos(qos))

    def publish(self, msg: Any) -> None:
        self.publish_raw(msgs.typestore().serialize_cdr(msg, self.msgtype))

    def publish_raw(self, cdr) -> None:
        _check_cdr(cdr)
        if self._mw._closed:
            raise MiddlewareError(f"publish on {self.topic}: the middleware is shut down")
        ret = ddspy_write(self._writer._ref, cdr)
        if ret < 0:
            raise MiddlewareError(f"DDS write on {self.topic} failed: {DDSException(ret)}")

    def subscription_count(self) -> int:
        return len(self._writer.get_matched_subscriptions())

    def destroy(self) -> None:
        _delete(self._writer)


class _Waitable:
    """Something the executor drains after a wake-up: a subscription or a service server."""

    def _drain(self) -> int:
        raise NotImplementedError


class _DdsSubscription(Subscription, _Waitable):
    def __init__(self, mw: "DdsMiddleware", topic: str, msgtype: str, callback: Callable, qos: QoS, raw: bool):
        self.topic, self.msgtype, self.qos, self.raw = topic, msgtype, qos, raw
        self._mw, self._callback = mw, callback
        self._reader = DataReader(mw._dp, mw._topic(dds_topic_name(topic), msgtype), qos=_dds_qos(qos))
        self._cond = ReadCondition(self._reader, _ANY_STATE)

    def _drain(self) -> int:
        n = 0
        store = msgs.typestore()
        samples = ddspy_take(self._reader._ref, _ANY_STATE, _TAKE_BATCH)
        if isinstance(samples, int):
            raise MiddlewareError(f"DDS take on {self.topic} failed: {DDSException(samples)}")
        for data, info in samples:
            if not info.valid_data:        # writer gone / disposed: no payload
                continue
            if self.raw:
                arg = data
            else:
                try:
                    arg = store.deserialize_cdr(data, self.msgtype)
                except Exception:
                    self._mw.callback_errors += 1
                    log.exception("could not decode a %s on %s (%d bytes); dropped", self.msgtype, self.topic,
                                  len(data))
                    continue
            self._mw._run_callback(self.topic, self._callback, arg)
            n += 1
        return n

    def publisher_count(self) -> int:
        return len(self._reader.get_matched_publications())

    def destroy(self) -> None:
        self._mw._remove_waitable(self, self._cond)
        _delete(self._cond)
        _delete(self._reader)


class _DdsTimer(Timer):
    def __init__(self, period_s: float, callback: Callable[[], None]):
        if not period_s > 0:
            raise ValueError(f"timer period must be > 0 s, got {period_s!r}")
        self.period_s = float(period_s)
        self._period_ns = max(1, int(round(period_s * 1e9)))
        self._callback = callback
        self._next_ns = time.monotonic_ns() + self._period_ns
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Responder:
    """The server half of one service in rmw_cyclonedds' format: takes requests, writes replies (any thread)."""

    def __init__(self, mw: "DdsMiddleware", name: str, srvtype: str):
        self.name, self.srvtype = name, srvtype
        self._req_t, self._resp_t = msgs.service_types(srvtype)
        rq, rr = dds_service_topics(name)
        user_data = f"serviceid={mw._new_csid()};".encode()
        self.reader = DataReader(mw._dp, mw._topic(rq, self._req_t, True), qos=_dds_qos(QoS.SERVICES, user_data))
        self._writer = DataWriter(mw._dp, mw._topic(rr, self._resp_t, True), qos=_dds_qos(QoS.SERVICES, user_data))
        self._mw = mw

    def take(self) -> list[tuple[Any, tuple[bytes, int]]]:
        """(request, reply token) for every request that arrived; undecodable ones are logged and dropped."""
        samples = ddspy_take(self.reader._ref, _ANY_STATE, _TAKE_BATCH)
        if isinstance(samples, int):
            raise MiddlewareError(f"DDS take on service {self.name} failed: {DDSException(samples)}")
        out = []
        for data, info in samples:
            if not info.valid_data:
                continue
            if len(data) < 4 + _REQ_HEADER.size or data[:2] != _CDR_LE:
                log.warning("service %s: malformed request (%d bytes); dropped", self.name, len(data))
                continue
            try:
                request = msgs.typestore().deserialize_cdr(data[:4] + data[4 + _REQ_HEADER.size:], self._req_t)
            except Exception:
                self._mw.callback_errors += 1
                log.exception("service %s: could not decode the request; dropped", self.name)
                continue
            out.append((request, (data[4:4 + _REQ_HEADER.size], info.publication_handle)))
        return out

    def reply(self, token: tuple[bytes, int], response: Any) -> None:
        """Send `response` to the client that made the request of `token` (logged, never raised, on failure)."""
        req_header, request_writer = token
        try:
            body = msgs.typestore().serialize_cdr(response, self._resp_t)
        except Exception:
            self._mw.callback_errors += 1
            log.exception("service %s: the reply %r is not a %s", self.name, response, self._resp_t)
            return
        if not self._client_reader_matched(request_writer):
            log.warning("service %s: the client's reply reader is not matched after 100 ms; reply dropped",
                        self.name)
            return
        ret = ddspy_write(self._writer._ref, bytes(body[:4]) + req_header + bytes(body[4:]))
        if ret < 0:
            log.error("service %s: reply write failed: %s", self.name, DDSException(ret))

    def _client_reader_matched(self, request_writer: int) -> bool:
        """rmw_cyclonedds' rule: wait (<= 100 ms) until the reply reader of the requesting client is matched."""
        deadline = time.monotonic() + 0.1
        while True:
            try:
                ep = self.reader.get_matched_publication_data(request_writer)
            except DDSException:
                ep = None
            if ep is None:
                return False        # the client is gone
            clientid = _user_data_key(ep.qos, "clientid")
            if clientid is None:
                return True         # a client without an id: assume its reader is there (as rmw does)
            for handle in self._writer.get_matched_subscriptions():
                try:
                    sub = self._writer.get_matched_subscription_data(handle)
                except DDSException:
                    continue
                if sub is not None and _user_data_key(sub.qos, "clientid") == clientid:
                    return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    def matched(self) -> bool:
        return bool(self.reader.get_matched_publications()) and bool(self._writer.get_matched_subscriptions())

    def destroy(self) -> None:
        _delete(self.reader)
        _delete(self._writer)


class _Requester:
    """The client half of one service in rmw_cyclonedds' format: sends requests (any thread), takes its replies."""

    def __init__(self, mw: "DdsMiddleware", name: str, srvtype: str):
        self.name, self.srvtype = name, srvtype
        self._req_t, self._resp_t = msgs.service_types(srvtype)
        rq, rr = dds_service_topics(name)
        user_data = f"clientid={mw._new_csid()};".encode()
        self._writer = DataWriter(mw._dp, mw._topic(rq, self._req_t, True), qos=_dds_qos(QoS.SERVICES, user_data))
        self.reader = DataReader(mw._dp, mw._topic(rr, self._resp_t, True), qos=_dds_qos(QoS.SERVICES, user_data))
        self._guid = self._writer.get_instance_handle() & 0xFFFF_FFFF_FFFF_FFFF   # the binding may return it signed
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def matched(self) -> bool:
        """True when a server's request reader and reply writer are both matched."""
        return bool(self._writer.get_matched_subscriptions()) and bool(self.reader.get_matched_publications())

    def send(self, request: Any) -> int:
        """Write `request`; returns its sequence number (the reply carries it)."""
        body = msgs.typestore().serialize_cdr(request, self._req_t)
        with self._lock:
            seq = next(self._seq)
            ret = ddspy_write(self._writer._ref, bytes(body[:4]) + _REQ_HEADER.pack(self._guid, seq) + bytes(body[4:]))
        if ret < 0:
            raise MiddlewareError(f"service {self.name}: request write failed: {DDSException(ret)}")
        return seq

    def take(self) -> list[tuple[int, Any]]:
        """(sequence number, response) for every reply to this client that arrived."""
        samples = ddspy_take(self.reader._ref, _ANY_STATE, _TAKE_BATCH)
        if isinstance(samples, int):
            raise MiddlewareError(f"service {self.name}: take failed: {DDSException(samples)}")
        out = []
        for data, info in samples:
            if not info.valid_data or len(data) < 4 + _REQ_HEADER.size:
                continue
            guid, seq = _REQ_HEADER.unpack_from(data, 4)
            if guid == self._guid:
                out.append((seq, msgs.typestore().deserialize_cdr(data[:4] + data[4 + _REQ_HEADER.size:],
                                                                  self._resp_t)))
        return out

    def destroy(self) -> None:
        _delete(self.reader)
        _delete(self._writer)


class _DdsServiceServer(ServiceServer, _Waitable):
    def __init__(self, mw: "DdsMiddleware", name: str, srvtype: str, handler: Callable[[Any], Any]):
        self.name, self.srvtype = name, srvtype
        self._mw, self._handler = mw, handler
        self._responder = _Responder(mw, name, srvtype)
        self._cond = ReadCondition(self._responder.reader, _ANY_STATE)

    def _drain(self) -> int:
        n = 0
        for request, token in self._responder.take():
            result: list = []
            if not self._mw._run_callback(f"service {self.name}", lambda r: result.append(self._handler(r)),
                                          request):
                continue    # the handler raised: no reply (the client times out), as rclpy does
            n += 1
            self._responder.reply(token, result[0])
        return n

    def destroy(self) -> None:
        self._mw._remove_waitable(self, self._cond)
        _delete(self._cond)
        self._responder.destroy()


class _DdsServiceClient(ServiceClient):
    def __init__(self, mw: "DdsMiddleware", name: str, srvtype: str):
        self.name, self.srvtype = name, srvtype
        self._requester = _Requester(mw, name, srvtype)
        self._waitset = WaitSet(mw._dp)
        self._cond = ReadCondition(self._requester.reader, _ANY_STATE)
        self._waitset.attach(self._cond)
        self._lock = threading.Lock()

    def wait_for_service(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._requester.matched():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)

    def call(self, request: Any, timeout_s: float) -> Any:
        with self._lock:
            seq = self._requester.send(request)
            deadline = time.monotonic_ns() + int(timeout_s * 1e9)
            while True:
                for rseq, response in self._requester.take():
                    if rseq == seq:
                        return response
                remaining = deadline - time.monotonic_ns()
                if remaining <= 0:
                    raise TimeoutError(f"service {self.name} ({self.srvtype}): no reply within {timeout_s} s")
                self._waitset.wait(remaining)

    def destroy(self) -> None:
        self._waitset.detach(self._cond)
        for e in (self._cond, self._waitset):
            _delete(e)
        self._requester.destroy()


class DdsMiddleware(Middleware):
    """Middleware on Cyclone DDS; one DomainParticipant per instance. See the module and base docstrings."""

    backend = "dds"

    def __init__(self, node_name: str = "dreamzero_policy", domain_id: int | None = None, namespace: str = "/"):
        super().__init__()
        self.node_name, self.namespace = node_name, namespace
        self.domain_id = resolve_domain_id(domain_id)
        msgs.typestore()     # fail early if the message definitions are missing
        self._dp = DomainParticipant(self.domain_id, qos=Qos(Policy.Userdata(data=b"enclave=/;")))
        self._topics: dict[str, tuple[Topic, str]] = {}
        self._waitset = WaitSet(self._dp)
        self._wake = GuardCondition(self._dp)
        self._waitset.attach(self._wake)
        self._waitables: tuple[_Waitable, ...] = ()
        self._timers: tuple[_DdsTimer, ...] = ()
        self._entities: list = []      # keeps publishers/clients alive until shutdown
        self._lock = threading.RLock()
        self._spin_lock = threading.Lock()
        self._spinner: int | None = None
        self._closed = False
        self._delete_pending = False
        self._csid_counter = itertools.count(1)
        self._guid_prefix = self._dp.guid.bytes[:12]

    # -- helpers -------------------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise MiddlewareError("the middleware is shut down")

    def _topic(self, dds_name: str, msgtype: str, request_header: bool = False) -> Topic:
        with self._lock:
            self._check_open()
            entry = self._topics.get(dds_name)
            if entry is not None:
                if entry[1] != msgtype:
                    raise MiddlewareError(f"DDS topic {dds_name} already has type {entry[1]}, not {msgtype}")
                return entry[0]
            topic = Topic(self._dp, dds_name, idl_struct(msgtype, msgs.typestore(), request_header))
            self._topics[dds_name] = (topic, msgtype)
            return topic

    def _new_csid(self) -> str:
        """A client/service id like rmw_cyclonedds': participant GUID prefix + a big-endian counter, '.'-joined hex."""
        data = self._guid_prefix + next(self._csid_counter).to_bytes(4, "big")
        return ".".join(f"{b:x}" for b in data)

    def _add_waitable(self, w: _Waitable, *conds: ReadCondition) -> None:
        with self._lock:
            self._check_open()
            for cond in conds:
                self._waitset.attach(cond)
            self._waitables = self._waitables + (w,)
        self._wake.set(True)

    def _remove_waitable(self, w: _Waitable, *conds: ReadCondition) -> None:
        with self._lock:
            self._waitables = tuple(x for x in self._waitables if x is not w)
            if not self._closed:
                for cond in conds:
                    self._waitset.detach(cond)

    # -- entities ------------------------------------------------------------------------------------------------
    def create_publisher(self, topic: str, msgtype: str, qos: QoS) -> Publisher:
        pub = _DdsPublisher(self, resolve_name(topic, self.node_name, self.namespace), msgtype, qos)
        with self._lock:
            self._entities.append(pub)
        return pub

    def create_subscription(self, topic: str, msgtype: str, callback: Callable[[Any], None], qos: QoS,
                            raw: bool = False) -> Subscription:
        sub = _DdsSubscription(self, resolve_name(topic, self.node_name, self.namespace), msgtype, callback, qos,
                               raw)
        self._add_waitable(sub, sub._cond)
        return sub

    def create_timer(self, period_s: float, callback: Callable[[], None]) -> Timer:
        timer = _DdsTimer(period_s, callback)
        with self._lock:
            self._check_open()
            self._timers = tuple(t for t in self._timers if not t.cancelled) + (timer,)
        self._wake.set(True)
        return timer

    def create_service(self, name: str, srvtype: str, handler: Callable[[Any], Any]) -> ServiceServer:
        srv = _DdsServiceServer(self, resolve_name(name, self.node_name, self.namespace), srvtype, handler)
        self._add_waitable(srv, srv._cond)
        return srv

    def create_client(self, name: str, srvtype: str) -> ServiceClient:
        cli = _DdsServiceClient(self, resolve_name(name, self.node_name, self.namespace), srvtype)
        with self._lock:
            self._entities.append(cli)
        return cli

    def create_action_client(self, name: str, action_type: str) -> ActionClient:
        from .dds_actions import DdsActionClient

        cli = DdsActionClient(self, resolve_name(name, self.node_name, self.namespace), action_type)
        self._add_waitable(cli, *cli._conds)
        return cli

    def create_action_server(self, name: str, action_type: str, on_goal: Callable[[ServerGoalHandle], bool],
                             on_cancel: Callable[[ServerGoalHandle], bool] | None = None) -> ActionServer:
        from .dds_actions import DdsActionServer

        srv = DdsActionServer(self, resolve_name(name, self.node_name, self.namespace), action_type, on_goal,
                              on_cancel)
        self._add_waitable(srv, *srv._conds)
        return srv

    # -- time and execution -------------------------------------------------------------------------------------
    def now_ns(self) -> int:
        return time.time_ns()

    @property
    def closed(self) -> bool:
        return self._closed

    def spin_once(self, timeout_s: float) -> int:
        if not self._spin_lock.acquire(blocking=False):
            raise MiddlewareError("another thread is already spinning this middleware (one executor thread only)")
        self._spinner = threading.get_ident()
        try:
            if self._closed:
                return 0
            wait_ns = max(0, int(timeout_s * 1e9))
            timers = self._timers
            if timers:
                soonest = min(t._next_ns for t in timers)
                wait_ns = min(wait_ns, max(0, soonest - time.monotonic_ns()))
            if wait_ns > 0:
                self._waitset.wait(wait_ns)
            self._wake.take()
            n = 0
            for w in self._waitables:
                if self._closed:
                    break
                n += w._drain()
            now = time.monotonic_ns()
            for t in timers:
                if t.cancelled or t._next_ns > now or self._closed:
                    continue
                t._next_ns += t._period_ns
                if t._next_ns <= now:          # fell behind by more than a period: skip the missed ticks
                    t._next_ns = now + t._period_ns
                self._run_callback("timer", t._callback)
                n += 1
            return n
        finally:
            self._spinner = None
            self._spin_lock.release()
            if self._delete_pending:
                self._destroy_all()

    def shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._wake.set(True)
        self._stop_background()
        if self._spinner == threading.get_ident():     # called from a callback: finish when spin_once returns
            self._delete_pending = True
            return
        if self._spin_lock.acquire(timeout=5.0):
            try:
                self._destroy_all()
            finally:
                self._spin_lock.release()
        else:
            log.warning("shutdown: a spinning thread did not return within 5 s; deleting the participant anyway")
            self._destroy_all()

    def _destroy_all(self) -> None:
        self._delete_pending = False
        self._waitables, self._timers = (), ()
        self._entities.clear()
        self._topics.clear()
        _delete(self._dp)    # deletes every child entity (readers, writers, topics, conditions, waitsets)
