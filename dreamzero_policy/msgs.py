"""Message types on the wire: one rosbags typestore with the standard ROS 2 types plus `dreamzero_msgs`.

Every message the runtime sends or receives is a rosbags dataclass of a type held by `typestore()`; the middleware
moves its CDR bytes (XCDR1 little endian, the ROS 2 wire format). No ROS install is needed.

Store choice: `Stores.ROS2_JAZZY`. Jazzy is the current ROS 2 LTS and the distro the node targets (MCAP bags by
default, rosbag2 metadata version 9 with RIHS01 type hashes, which rosbags computes from this store). The types the
runtime uses (sensor_msgs Image/CompressedImage/JointState, std_msgs, trajectory_msgs, builtin_interfaces) have the
same definitions, hence the same CDR bytes, on Humble, so a Humble graph interoperates too.

Where the dreamzero_msgs definitions come from (one place only):
1. `dreamzero_policy/msg_defs/` -- a symlink to the repo's `dreamzero_msgs/` package (copied into wheels as
   package data), so a source checkout or a pip install always reads the definitions that match this code;
2. otherwise, on a ROS install, the `dreamzero_msgs` share directory found through the ament index.

Services are registered as their two message types, as rosidl names them: `<pkg>/srv/<Srv>_Request` and
`<pkg>/srv/<Srv>_Response` (e.g. `std_srvs/srv/Trigger_Request`). rosbags ships no std_srvs, so std_srvs/Trigger
(the episode-reset service) is registered here from its standard definition.

Actions are registered as rosidl generates them: `<pkg>/action/<A>_Goal`, `_Result`, `_Feedback` and the types on the
wire, `_SendGoal_Request` (goal_id, goal), `_SendGoal_Response` (accepted, stamp), `_GetResult_Request` (goal_id),
`_GetResult_Response` (status, result) and `_FeedbackMessage` (goal_id, feedback). Standard definitions rosbags does
not ship (control_msgs/FollowJointTrajectory, action_msgs/CancelGoal) live in `dreamzero_policy/ros_interfaces/`.
"""
from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.interfaces import Nodetype

STORE = Stores.ROS2_JAZZY
MSG_PACKAGE = "dreamzero_msgs"

# Standard definition of std_srvs/srv/Trigger (rosbags ships no std_srvs).
_STD_SRVS = {"Trigger": "---\nbool success   # indicate successful run of triggered service\nstring message # informational, e.g. for error messages\n"}

# rosidl gives an empty structure this single member; rmw implementations put it on the wire (one uint8).
_EMPTY_STRUCT_FIELD = ("structure_needs_at_least_one_member", (Nodetype.BASE, ("uint8", 0)))

# Standard ROS 2 interfaces missing from rosbags' store: <pkg>/<msg|srv|action>/<Name>.<ext> files.
INTERFACES_DIR = Path(__file__).resolve().parent / "ros_interfaces"

_lock = threading.Lock()


def msg_defs_dir() -> Path:
    """The directory that holds `msg/*.msg` and `srv/*.srv` of dreamzero_msgs (see the module docstring)."""
    local = Path(__file__).resolve().parent / "msg_defs"
    if (local / "msg").is_dir():
        return local
    share = _ament_share_dir(MSG_PACKAGE)
    if share is not None and (share / "msg").is_dir():
        return share
    raise FileNotFoundError(
        f"dreamzero_msgs definitions not found: neither {local}/msg (the msg_defs symlink to the repo's "
        f"dreamzero_msgs/ package) nor an ament index share directory of {MSG_PACKAGE} on AMENT_PREFIX_PATH="
        f"{os.environ.get('AMENT_PREFIX_PATH', '')!r}")


def _ament_share_dir(package: str) -> Path | None:
    """`<prefix>/share/<package>` of the first prefix on AMENT_PREFIX_PATH whose ament index lists the package."""
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        if prefix and (Path(prefix) / "share/ament_index/resource_index/packages" / package).is_file():
            return Path(prefix) / "share" / package
    return None


def _parse_msg(text: str, msgtype: str) -> dict:
    """get_types_from_msg for a message named exactly `msgtype` (rosbags only accepts `<pkg>/msg/<Name>` names)."""
    pkg, kind, name = msgtype.split("/")
    parsed = get_types_from_msg(text, f"{pkg}/msg/{name}")
    consts, fields = parsed.pop(f"{pkg}/msg/{name}")
    if not fields:
        fields = [_EMPTY_STRUCT_FIELD]
    parsed[msgtype] = (consts, fields)
    return parsed


def _sections(text: str, count: int, what: str) -> list[str]:
    """The `count` parts of a .srv/.action text between its '---' separator lines."""
    lines = text.splitlines()
    split = [i for i, line in enumerate(lines) if line.strip() == "---"]
    if len(split) != count - 1:
        raise ValueError(f"{what}: expected {count - 1} '---' separator line(s), found {len(split)}")
    bounds = [-1, *split, len(lines)]
    return ["\n".join(lines[a + 1:b]) for a, b in zip(bounds, bounds[1:])]


def _parse_srv(text: str, srvtype: str) -> dict:
    """The `_Request` and `_Response` message types of a .srv text (`srvtype` like `std_srvs/srv/Trigger`)."""
    request, response = _sections(text, 2, srvtype)
    types = _parse_msg(request, f"{srvtype}_Request")
    types.update(_parse_msg(response, f"{srvtype}_Response"))
    return types


def _parse_action(text: str, actiontype: str) -> dict:
    """rosidl's message types of a .action text (`actiontype` like `control_msgs/action/FollowJointTrajectory`)."""
    types: dict = {}
    for part, suffix in zip(_sections(text, 3, actiontype), ("Goal", "Result", "Feedback")):
        types.update(_parse_msg(part, f"{actiontype}_{suffix}"))
    name = lambda t: (Nodetype.NAME, t)  # noqa: E731
    uuid, time, a = name("unique_identifier_msgs/msg/UUID"), name("builtin_interfaces/msg/Time"), actiontype
    types[f"{a}_SendGoal_Request"] = ([], [("goal_id", uuid), ("goal", name(f"{a}_Goal"))])
    types[f"{a}_SendGoal_Response"] = ([], [("accepted", (Nodetype.BASE, ("bool", 0))), ("stamp", time)])
    types[f"{a}_GetResult_Request"] = ([], [("goal_id", uuid)])
    types[f"{a}_GetResult_Response"] = ([], [("status", (Nodetype.BASE, ("int8", 0))),
                                             ("result", name(f"{a}_Result"))])
    types[f"{a}_FeedbackMessage"] = ([], [("goal_id", uuid), ("feedback", name(f"{a}_Feedback"))])
    return types


_PARSERS = {"msg": _parse_msg, "srv": _parse_srv, "action": _parse_action}


def _standard_interfaces(root: Path) -> dict:
    """Every `<pkg>/<msg|srv|action>/<Name>.<ext>` definition under `root`."""
    types: dict = {}
    for path in sorted(root.glob("*/*/*.*")):
        kind = path.parent.name
        if kind in _PARSERS and path.suffix == f".{kind}":
            types.update(_PARSERS[kind](path.read_text(), f"{path.parent.parent.name}/{kind}/{path.stem}"))
    return types


def _dreamzero_types(root: Path) -> dict:
    types: dict = {}
    for path in sorted((root / "msg").glob("*.msg")):
        types.update(_parse_msg(path.read_text(), f"{MSG_PACKAGE}/msg/{path.stem}"))
    for path in sorted((root / "srv").glob("*.srv")):
        types.update(_parse_srv(path.read_text(), f"{MSG_PACKAGE}/srv/{path.stem}"))
    return types


_store = None


def typestore():
    """The process-wide rosbags Typestore: ROS 2 Jazzy standard types + std_srvs/Trigger + ros_interfaces/ +
    dreamzero_msgs.

    Built once (thread-safe) on first use and cached; treat it as read-only.
    """
    global _store
    if _store is None:
        with _lock:
            if _store is None:
                store = get_typestore(STORE)
                extra: dict = {}
                for name, text in _STD_SRVS.items():
                    extra.update(_parse_srv(text, f"std_srvs/srv/{name}"))
                extra.update(_standard_interfaces(INTERFACES_DIR))
                extra.update(_dreamzero_types(msg_defs_dir()))
                store.register(extra)
                _store = store
    return _store


def service_types(srvtype: str) -> tuple[str, str]:
    """(`<srvtype>_Request`, `<srvtype>_Response`) for a service type like `std_srvs/srv/Trigger`, both registered."""
    req, resp = f"{srvtype}_Request", f"{srvtype}_Response"
    store = typestore()
    for t in (req, resp):
        if t not in store.types:
            known = sorted(k[:-len("_Request")] for k in store.types if "/srv/" in k and k.endswith("_Request"))
            raise KeyError(f"unknown service type {srvtype!r}: {t!r} is not registered; known: {known}")
    return req, resp


class ActionTypes(NamedTuple):
    """The type names of one action (see the module docstring); send_goal/get_result are service types."""

    goal: str
    result: str
    feedback: str
    send_goal: str
    get_result: str
    feedback_message: str


def action_types(actiontype: str) -> ActionTypes:
    """The registered types of an action like `control_msgs/action/FollowJointTrajectory`; KeyError names it."""
    a = actiontype
    names = ActionTypes(f"{a}_Goal", f"{a}_Result", f"{a}_Feedback", f"{a}_SendGoal", f"{a}_GetResult",
                        f"{a}_FeedbackMessage")
    if f"{a}_SendGoal_Request" not in typestore().types:
        known = sorted(k[:-len("_Goal")] for k in typestore().types if "/action/" in k and k.endswith("_Goal"))
        raise KeyError(f"unknown action type {actiontype!r}; known: {known}")
    return names


def msg_class(msgtype: str) -> type:
    """The rosbags dataclass of `msgtype` (e.g. `sensor_msgs/msg/JointState`); KeyError names the type."""
    try:
        return typestore().types[msgtype]
    except KeyError:
        raise KeyError(f"unknown message type {msgtype!r} (expected '<pkg>/msg/<Type>' held by "
                       f"dreamzero_policy.msgs.typestore())") from None


_NUMPY = {"bool": np.bool_, "byte": np.uint8, "char": np.uint8, "int8": np.int8, "uint8": np.uint8,
          "int16": np.int16, "uint16": np.uint16, "int32": np.int32, "uint32": np.uint32, "int64": np.int64,
          "uint64": np.uint64, "float32": np.float32, "float64": np.float64}


def default_msg(msgtype: str, **fields: Any) -> Any:
    """A message of `msgtype`; fields not given are zero, "" or empty, recursively (default values written in a
    .msg, e.g. Quaternion's w 1, are not applied)."""
    _consts, defs = typestore().fielddefs[msgtype]
    for name, desc in defs:
        if name not in fields:
            fields[name] = _default_value(desc)
    return msg_class(msgtype)(**fields)


def _default_value(desc) -> Any:
    kind, detail = desc
    if kind == Nodetype.NAME:
        return default_msg(detail)
    if kind == Nodetype.BASE:
        return "" if detail[0] in ("string", "wstring") else _NUMPY[detail[0]](0).item()
    sub, length = detail
    if kind == Nodetype.ARRAY:
        if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY:
            return np.zeros(length, _NUMPY[sub[1][0]])
        return [_default_value(sub) for _ in range(length)]
    if sub[0] == Nodetype.BASE and sub[1][0] in _NUMPY:  # sequence
        return np.zeros(0, _NUMPY[sub[1][0]])
    return []


def serialize(msg: Any, msgtype: str | None = None) -> bytes:
    """CDR (XCDR1 little endian, 4-byte encapsulation header `00 01 00 00`) bytes of a rosbags message."""
    msgtype = msgtype or msg.__msgtype__
    return bytes(typestore().serialize_cdr(msg, msgtype))


def deserialize(data: bytes | memoryview, msgtype: str) -> Any:
    """A rosbags message from CDR bytes.

    Array fields of primitives (e.g. Image.data) are numpy views into `data`, not copies: read-only when `data` is
    `bytes` (what subscriptions deliver). Copy before modifying in place.
    """
    return typestore().deserialize_cdr(data, msgtype)


# ---------------------------------------------------------------------------------------------------------------
# Small constructors. Time in the runtime is int nanoseconds; these convert at the message boundary.

def time_msg(ns: int):
    """builtin_interfaces/Time from integer nanoseconds (floor division: negative times keep 0 <= nanosec < 1e9)."""
    sec, nanosec = divmod(int(ns), 1_000_000_000)
    return msg_class("builtin_interfaces/msg/Time")(sec=sec, nanosec=nanosec)


def time_to_ns(t) -> int:
    """Integer nanoseconds of a builtin_interfaces/Time (or Duration)."""
    return int(t.sec) * 1_000_000_000 + int(t.nanosec)


def header(stamp_ns: int, frame_id: str = ""):
    """std_msgs/Header with the stamp given in integer nanoseconds."""
    return msg_class("std_msgs/msg/Header")(stamp=time_msg(stamp_ns), frame_id=frame_id)


def duration_msg(seconds: float):
    """builtin_interfaces/Duration from seconds (rounded to the nearest nanosecond)."""
    if not math.isfinite(seconds):
        raise ValueError(f"duration must be finite, got {seconds!r}")
    sec, nanosec = divmod(round(seconds * 1e9), 1_000_000_000)
    return msg_class("builtin_interfaces/msg/Duration")(sec=sec, nanosec=nanosec)


def duration_to_s(d) -> float:
    """Seconds of a builtin_interfaces/Duration."""
    return int(d.sec) + int(d.nanosec) * 1e-9
