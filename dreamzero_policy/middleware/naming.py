"""ROS 2 names and their DDS spellings (as rmw_cyclonedds_cpp writes them).

- topic `/foo/bar` -> DDS topic `rt/foo/bar`
- service `/reset` -> request topic `rq/resetRequest`, reply topic `rr/resetReply`
- action `/arm/follow` -> services `/arm/follow/_action/{send_goal,cancel_goal,get_result}` and topics
  `/arm/follow/_action/{feedback,status}` (rcl_action's names), each spelled as above
- type `sensor_msgs/msg/JointState` -> `sensor_msgs::msg::dds_::JointState_`;
  service request `std_srvs/srv/Trigger_Request` -> `std_srvs::srv::dds_::Trigger_Request_`

Names given to the middleware are resolved like rclcpp/rclpy do for a node in namespace `namespace`:
`/abs` stays, `rel` -> `<namespace>/rel`, `~/priv` -> `<namespace>/<node>/priv`.
"""
from __future__ import annotations

import re

_TOKEN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def resolve_name(name: str, node_name: str, namespace: str = "/") -> str:
    """Fully qualified ROS name of topic/service `name` for node `node_name` in `namespace`."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"topic/service name must be a non-empty string, got {name!r}")
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if name.startswith("~"):
        if name != "~" and not name.startswith("~/"):
            raise ValueError(f"invalid name {name!r}: '~' must be followed by '/'")
        full = f"{ns}/{node_name}{name[1:]}"
    elif name.startswith("/"):
        full = name
    else:
        full = f"{ns}/{name}"
    full = full.rstrip("/") if len(full) > 1 else full
    parts = full.split("/")[1:]
    if not parts or any(not _TOKEN.match(p) for p in parts):
        raise ValueError(f"invalid ROS name {name!r} (resolved {full!r}): each '/'-separated token must match "
                         f"[A-Za-z_][A-Za-z0-9_]*")
    return full


def dds_topic_name(ros_topic: str) -> str:
    """`/foo/bar` -> `rt/foo/bar` (the argument must be fully qualified)."""
    _check_fq(ros_topic)
    return "rt" + ros_topic


def dds_service_topics(ros_service: str) -> tuple[str, str]:
    """(`rq/<name>Request`, `rr/<name>Reply`) for a fully qualified service name."""
    _check_fq(ros_service)
    return f"rq{ros_service}Request", f"rr{ros_service}Reply"


def action_names(ros_action: str) -> dict[str, str]:
    """The ROS names of an action's services and topics (rcl_action): send_goal, cancel_goal, get_result, feedback,
    status -> `<action>/_action/<part>` (the argument must be fully qualified)."""
    _check_fq(ros_action)
    return {part: f"{ros_action}/_action/{part}" for part in ("send_goal", "cancel_goal", "get_result", "feedback",
                                                              "status")}


def dds_type_name(msgtype: str) -> str:
    """`pkg/msg/Type` -> `pkg::msg::dds_::Type_` (also `pkg/srv/Srv_Request` -> `pkg::srv::dds_::Srv_Request_`,
    `pkg/action/A_SendGoal_Request` -> `pkg::action::dds_::A_SendGoal_Request_`)."""
    parts = msgtype.split("/")
    if len(parts) != 3 or not all(parts):
        raise ValueError(f"message type must look like '<pkg>/msg/<Type>', got {msgtype!r}")
    pkg, kind, name = parts
    return f"{pkg}::{kind}::dds_::{name}_"


def ros_type_name(dds_name: str) -> str:
    """Inverse of dds_type_name: `pkg::msg::dds_::Type_` -> `pkg/msg/Type`."""
    parts = dds_name.split("::")
    if len(parts) != 4 or parts[2] != "dds_" or not parts[3].endswith("_"):
        raise ValueError(f"not a ROS 2 DDS type name: {dds_name!r}")
    return f"{parts[0]}/{parts[1]}/{parts[3][:-1]}"


def _check_fq(name: str) -> None:
    if not name.startswith("/"):
        raise ValueError(f"expected a fully qualified name starting with '/', got {name!r}")
