"""ROS 2 actions on the built-in DDS backend, in the wire format rcl_action + rmw_cyclonedds use.

Action `/arm/follow` of type `pkg/action/A` is (naming.action_names):
- service `/arm/follow/_action/send_goal` (`pkg/action/A_SendGoal`: goal_id + goal -> accepted + stamp),
- service `/arm/follow/_action/cancel_goal` (`action_msgs/srv/CancelGoal`),
- service `/arm/follow/_action/get_result` (`pkg/action/A_GetResult`: goal_id -> status + result; the server
  answers once the goal is terminal),
- topic `/arm/follow/_action/feedback` (`pkg/action/A_FeedbackMessage`, reliable, volatile, keep last 10),
- topic `/arm/follow/_action/status` (`action_msgs/msg/GoalStatusArray`, reliable, transient local, keep last 1).
Services are rmw_cyclonedds services (dds_backend._Requester / _Responder), so DDS names and types follow from
naming.py: `rq/arm/follow/_action/send_goalRequest`, `pkg::action::dds_::A_SendGoal_Request_`, ...

Like rclcpp/rclpy clients, the client asks for the result as soon as a goal is accepted. Like rcl_action servers,
the server keeps finished goals (in the status array, results available) for RESULT_TIMEOUT_S; rcl_action's default
is 15 min, shorter here because the policy node sends a goal per chunk.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from cyclonedds.core import DDSException, ReadCondition
from cyclonedds.pub import DataWriter
from cyclonedds.sub import DataReader
from cyclonedds._clayer import ddspy_take, ddspy_write

from .. import msgs
from .base import ActionClient, ActionServer, ClientGoalHandle, GoalStatus, MiddlewareError, ServerGoalHandle, log
from .dds_backend import _ANY_STATE, _TAKE_BATCH, _delete, _dds_qos, _Requester, _Responder, _Waitable
from .naming import action_names, dds_topic_name
from .qos import Durability, QoS, Reliability

if TYPE_CHECKING:
    from .dds_backend import DdsMiddleware

CANCEL_TYPE = "action_msgs/srv/CancelGoal"
STATUS_TYPE = "action_msgs/msg/GoalStatusArray"
FEEDBACK_QOS = QoS.RELIABLE                                             # rmw_qos_profile_default
STATUS_QOS = QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 1)   # rcl_action_qos_profile_status_default
RESULT_TIMEOUT_S = 60.0
MAX_PENDING_GOALS = 100       # a client forgets its oldest unfinished goal beyond this (a server that went away)
# action_msgs/srv/CancelGoal return codes
CANCEL_NONE, CANCEL_REJECTED, CANCEL_UNKNOWN_GOAL, CANCEL_TERMINATED = 0, 1, 2, 3


def _uuid(goal_id: bytes):
    return msgs.msg_class("unique_identifier_msgs/msg/UUID")(uuid=np.frombuffer(goal_id, np.uint8).copy())


def _goal_info(goal_id: bytes, stamp_ns: int):
    return msgs.msg_class("action_msgs/msg/GoalInfo")(goal_id=_uuid(goal_id), stamp=msgs.time_msg(stamp_ns))


def _take(reader: DataReader, msgtype: str, what: str) -> list:
    """Decoded samples of a topic reader (undecodable ones are logged and dropped)."""
    samples = ddspy_take(reader._ref, _ANY_STATE, _TAKE_BATCH)
    if isinstance(samples, int):
        raise MiddlewareError(f"DDS take on {what} failed: {DDSException(samples)}")
    out = []
    for data, info in samples:
        if info.valid_data:
            try:
                out.append(msgs.deserialize(data, msgtype))
            except Exception:
                log.exception("could not decode a %s on %s; dropped", msgtype, what)
    return out


def _write(writer: DataWriter, msg: Any, msgtype: str, what: str) -> None:
    ret = ddspy_write(writer._ref, msgs.typestore().serialize_cdr(msg, msgtype))
    if ret < 0:
        raise MiddlewareError(f"DDS write on {what} failed: {DDSException(ret)}")


class _ActionEndpoints(_Waitable):
    """The three services and two topics of one action, on the client side (requesters, topic readers) or the
    server side (responders, topic writers)."""

    def __init__(self, mw: "DdsMiddleware", name: str, action_type: str, service: type, topic: type):
        self.name, self.action_type = name, action_type
        self._mw = mw
        self._types = msgs.action_types(action_type)
        names = action_names(name)
        self._send = service(mw, names["send_goal"], self._types.send_goal)
        self._cancel = service(mw, names["cancel_goal"], CANCEL_TYPE)
        self._result = service(mw, names["get_result"], self._types.get_result)
        self._feedback_topic, self._status_topic = names["feedback"], names["status"]
        self._feedback = topic(mw._dp, mw._topic(dds_topic_name(names["feedback"]), self._types.feedback_message),
                               qos=_dds_qos(FEEDBACK_QOS))
        self._status = topic(mw._dp, mw._topic(dds_topic_name(names["status"]), STATUS_TYPE), qos=_dds_qos(STATUS_QOS))
        self._conds = [ReadCondition(r.reader, _ANY_STATE) for r in (self._send, self._cancel, self._result)]

    def destroy(self) -> None:
        self._mw._remove_waitable(self, *self._conds)
        for e in (*self._conds, self._feedback, self._status):
            _delete(e)
        for r in (self._send, self._cancel, self._result):
            r.destroy()


class DdsActionClient(_ActionEndpoints, ActionClient):
    def __init__(self, mw: "DdsMiddleware", name: str, action_type: str):
        super().__init__(mw, name, action_type, _Requester, DataReader)
        self._conds += [ReadCondition(r, _ANY_STATE) for r in (self._feedback, self._status)]
        self._lock = threading.Lock()
        self._goals: OrderedDict[bytes, ClientGoalHandle] = OrderedDict()   # unfinished goals by id
        self._sent: dict[int, ClientGoalHandle] = {}        # send_goal sequence number -> goal
        self._asked: dict[int, ClientGoalHandle] = {}       # get_result sequence number -> goal

    def server_is_ready(self) -> bool:
        return (self._send.matched() and self._cancel.matched() and self._result.matched()
                and bool(self._feedback.get_matched_publications()) and bool(self._status.get_matched_publications()))

    def send_goal(self, goal: Any, on_done: Callable[[ClientGoalHandle], None] | None = None,
                  on_feedback: Callable[[Any], None] | None = None) -> ClientGoalHandle:
        if not self.server_is_ready():
            raise MiddlewareError(f"action server {self.name} not available; goal not sent")
        handle = ClientGoalHandle(on_done, on_feedback)
        request = msgs.msg_class(f"{self._types.send_goal}_Request")(goal_id=_uuid(handle.goal_id), goal=goal)
        with self._lock:       # held across the write: the reply must find the goal
            while len(self._goals) >= MAX_PENDING_GOALS:
                self._forget(next(iter(self._goals.values())))
            self._goals[handle.goal_id] = handle
            self._sent[self._send.send(request)] = handle
        return handle

    def cancel(self, handle: ClientGoalHandle) -> None:
        with self._lock:
            if handle.done or handle.cancel_requested:
                return
            handle.cancel_requested = True
            if not handle.accepted:
                return         # not answered yet: cancelled once accepted (see _drain)
        self._request_cancel(handle)

    def _request_cancel(self, handle: ClientGoalHandle) -> None:
        self._cancel.send(msgs.msg_class(f"{CANCEL_TYPE}_Request")(goal_info=_goal_info(handle.goal_id, 0)))

    def _forget(self, handle: ClientGoalHandle) -> None:
        """Drop an unfinished goal (lock held)."""
        log.debug("action %s: forgetting unfinished goal %r", self.name, handle)
        self._goals.pop(handle.goal_id, None)
        for table in (self._sent, self._asked):
            for seq in [s for s, h in table.items() if h is handle]:
                del table[seq]

    def _drain(self) -> int:
        n = 0
        what = f"action {self.name}"
        for seq, response in self._send.take():
            with self._lock:
                handle = self._sent.pop(seq, None)
                if handle is not None and response.accepted:
                    handle.accepted = True
                    handle.status = max(handle.status, GoalStatus.ACCEPTED)
                    request = msgs.msg_class(f"{self._types.get_result}_Request")(goal_id=_uuid(handle.goal_id))
                    self._asked[self._result.send(request)] = handle
                elif handle is not None:
                    self._goals.pop(handle.goal_id, None)
            if handle is None:
                continue
            n += 1
            if not response.accepted:
                handle._finish(self._mw, f"{what} (goal rejected)", False, GoalStatus.UNKNOWN, None)
            elif handle.cancel_requested:
                self._request_cancel(handle)
        for seq, response in self._result.take():
            with self._lock:
                handle = self._asked.pop(seq, None)
                if handle is not None:
                    self._goals.pop(handle.goal_id, None)
            if handle is not None:
                n += 1
                handle._finish(self._mw, f"{what} (result)", True, response.status, response.result)
        for _seq, response in self._cancel.take():
            if response.return_code != CANCEL_NONE:
                log.debug("%s: cancel request answered with return code %d", what, response.return_code)
        for message in _take(self._feedback, self._types.feedback_message, self._feedback_topic):
            handle = self._goals.get(bytes(message.goal_id.uuid))
            if handle is not None and handle.on_feedback is not None:
                n += 1
                self._mw._run_callback(f"{what} (feedback)", handle.on_feedback, message.feedback)
        for array in _take(self._status, STATUS_TYPE, self._status_topic):
            for status in array.status_list:
                handle = self._goals.get(bytes(status.goal_info.goal_id.uuid))
                if handle is not None and not GoalStatus(status.status).terminal:   # terminal: with the result
                    handle.status = GoalStatus(status.status)
        return n


class _DdsServerGoalHandle(ServerGoalHandle):
    def __init__(self, server: "DdsActionServer", goal_id: bytes, goal: Any, stamp_ns: int):
        self.goal_id, self.goal, self.stamp_ns = goal_id, goal, stamp_ns
        self.status = GoalStatus.EXECUTING
        self.result: Any = None
        self.finished_at = 0.0
        self._server = server

    def publish_feedback(self, feedback: Any) -> None:
        if self.active:
            self._server._publish_feedback(self, feedback)

    def succeed(self, result: Any) -> None:
        self._server._finish(self, GoalStatus.SUCCEEDED, result)

    def abort(self, result: Any) -> None:
        self._server._finish(self, GoalStatus.ABORTED, result)

    def canceled(self, result: Any) -> None:
        """Also from EXECUTING (through CANCELING, as rclcpp's try_canceling): a server may cancel on its own."""
        self._server._finish(self, GoalStatus.CANCELED, result)


class DdsActionServer(_ActionEndpoints, ActionServer):
    def __init__(self, mw: "DdsMiddleware", name: str, action_type: str, on_goal: Callable[[ServerGoalHandle], bool],
                 on_cancel: Callable[[ServerGoalHandle], bool] | None):
        super().__init__(mw, name, action_type, _Responder, DataWriter)
        self._on_goal, self._on_cancel = on_goal, on_cancel
        self._lock = threading.RLock()
        self._goals: OrderedDict[bytes, _DdsServerGoalHandle] = OrderedDict()
        self._waiting: dict[bytes, list] = {}        # goal id -> get_result reply tokens

    # --- executor thread ---
    def _drain(self) -> int:
        return self._serve_goals() + self._serve_cancels() + self._serve_results()

    def _serve_goals(self) -> int:
        n = 0
        response_t = msgs.msg_class(f"{self._types.send_goal}_Response")
        for request, token in self._send.take():
            handle = _DdsServerGoalHandle(self, bytes(request.goal_id.uuid), request.goal, self._mw.now_ns())
            with self._lock:
                self._goals[handle.goal_id] = handle      # before on_goal: it may finish the goal at once
            verdict: list = []
            ok = self._mw._run_callback(f"action {self.name} (goal)", lambda: verdict.append(self._on_goal(handle)))
            accepted = ok and bool(verdict[0])
            if not accepted:
                with self._lock:
                    self._goals.pop(handle.goal_id, None)
            self._send.reply(token, response_t(accepted=accepted, stamp=msgs.time_msg(handle.stamp_ns)))
            if accepted:
                self._publish_status()
            n += 1
        return n

    def _serve_cancels(self) -> int:
        n = 0
        response_t = msgs.msg_class(f"{CANCEL_TYPE}_Response")
        for request, token in self._cancel.take():
            goal_id, stamp_ns = bytes(request.goal_info.goal_id.uuid), msgs.time_to_ns(request.goal_info.stamp)
            with self._lock:
                goals = list(self._goals.values())
            chosen = [h for h in goals if (not any(goal_id) and stamp_ns == 0) or h.goal_id == goal_id
                      or (stamp_ns and h.stamp_ns <= stamp_ns)]
            canceling = [h for h in chosen if h.active and self._accept_cancel(h)]
            if canceling:
                code = CANCEL_NONE
            elif any(goal_id) and not chosen:
                code = CANCEL_UNKNOWN_GOAL
            elif chosen and not any(h.active for h in chosen):
                code = CANCEL_TERMINATED
            else:
                code = CANCEL_REJECTED
            self._cancel.reply(token, response_t(return_code=code, goals_canceling=[
                _goal_info(h.goal_id, h.stamp_ns) for h in canceling]))
            if canceling:
                self._publish_status()
            n += 1
        return n

    def _accept_cancel(self, handle: _DdsServerGoalHandle) -> bool:
        if handle.status == GoalStatus.CANCELING:
            return True
        if self._on_cancel is None:
            return False
        verdict: list = []
        ok = self._mw._run_callback(f"action {self.name} (cancel)", lambda: verdict.append(self._on_cancel(handle)))
        with self._lock:
            if ok and verdict[0] and handle.active:
                handle.status = GoalStatus.CANCELING
                return True
        return False

    def _serve_results(self) -> int:
        n = 0
        for request, token in self._result.take():
            goal_id = bytes(request.goal_id.uuid)
            with self._lock:
                handle = self._goals.get(goal_id)
                if handle is not None and handle.active:
                    self._waiting.setdefault(goal_id, []).append(token)
                    continue
            self._reply_result(token, handle)
            n += 1
        return n

    # --- any thread ---
    def _reply_result(self, token, handle: _DdsServerGoalHandle | None) -> None:
        """The result of a finished goal; an unknown goal gets STATUS_UNKNOWN and an empty result (as rcl_action)."""
        result = handle.result if handle is not None else msgs.default_msg(self._types.result)
        status = handle.status if handle is not None else GoalStatus.UNKNOWN
        self._result.reply(token, msgs.msg_class(f"{self._types.get_result}_Response")(status=int(status),
                                                                                      result=result))

    def _finish(self, handle: _DdsServerGoalHandle, status: GoalStatus, result: Any) -> None:
        with self._lock:
            if not handle.active:
                return
            handle.status, handle.result, handle.finished_at = status, result, time.monotonic()
            tokens = self._waiting.pop(handle.goal_id, [])
        for token in tokens:
            self._reply_result(token, handle)
        self._publish_status()

    def _publish_feedback(self, handle: _DdsServerGoalHandle, feedback: Any) -> None:
        message = msgs.msg_class(self._types.feedback_message)(goal_id=_uuid(handle.goal_id), feedback=feedback)
        _write(self._feedback, message, self._types.feedback_message, self._feedback_topic)

    def _publish_status(self) -> None:
        status_t = msgs.msg_class("action_msgs/msg/GoalStatus")
        with self._lock:
            expired = time.monotonic() - RESULT_TIMEOUT_S
            for goal_id in [g for g, h in self._goals.items() if not h.active and h.finished_at < expired]:
                del self._goals[goal_id]
            status_list = [status_t(goal_info=_goal_info(h.goal_id, h.stamp_ns), status=int(h.status))
                           for h in self._goals.values()]
            _write(self._status, msgs.msg_class(STATUS_TYPE)(status_list=status_list), STATUS_TYPE,
                   self._status_topic)
