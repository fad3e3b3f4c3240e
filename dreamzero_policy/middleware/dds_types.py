"""Cyclone DDS topic types built from the rosbags message definitions.

The DDS backend never (de)serializes through these classes: payloads are the CDR bytes rosbags makes, written and
taken through the binding's serialized-data calls. The types exist so that Cyclone announces the right type during
discovery: the type name (`<pkg>::msg::dds_::<Type>_`) and, for XTypes type matching, a structure identical to the
one rmw_cyclonedds_cpp describes (final structs, ROS field names, byte/char as uint8, nested types named the same way).

Cyclone's Python binding validates ("normalizes") every written and received payload against the topic type, so
the type must describe the bytes exactly. Service request/reply payloads carry rmw_cyclonedds' 16-byte request
header (`uint64 guid, int64 seq`) in front of the body; their types (`with_request_header=True`) therefore start with
those two members. rmw_cyclonedds releases up to Jazzy announce no XTypes type information (ros2/rmw_cyclonedds
#530), so peers match by type name and the extra members do not matter; an rmw that announces type objects describes
the body only, and Cyclone's type check would then refuse to match service endpoints (topics are unaffected).
"""
from __future__ import annotations

import threading

from cyclonedds.idl import IdlStruct, make_idl_struct
from cyclonedds.idl import types as T
from rosbags.interfaces import Nodetype

from .naming import dds_type_name

_PRIMITIVES = {
    "bool": bool,
    "byte": T.uint8,   # rosidl maps byte and char to uint8 on the wire (and in rmw_cyclonedds' type objects)
    "char": T.uint8,
    "int8": T.int8,
    "uint8": T.uint8,
    "int16": T.int16,
    "uint16": T.uint16,
    "int32": T.int32,
    "uint32": T.uint32,
    "int64": T.int64,
    "uint64": T.uint64,
    "float32": T.float32,
    "float64": T.float64,
}

REQUEST_HEADER_FIELDS = {"rmw_request_header_guid": T.uint64, "rmw_request_header_seq": T.int64}

_cache: dict[tuple[str, bool], type[IdlStruct]] = {}
_lock = threading.RLock()


def idl_struct(msgtype: str, store, with_request_header: bool = False) -> type[IdlStruct]:
    """The IdlStruct class for rosbags type `msgtype` (cached per process).

    with_request_header: prepend rmw_cyclonedds' service request header members (service request/reply topics).
    """
    key = (msgtype, with_request_header)
    with _lock:
        cls = _cache.get(key)
        if cls is None:
            cls = _build(msgtype, store, with_request_header)
            _cache[key] = cls
        return cls


def _build(msgtype: str, store, with_request_header: bool) -> type[IdlStruct]:
    try:
        _consts, fields = store.fielddefs[msgtype]
    except KeyError:
        raise KeyError(f"message type {msgtype!r} is not in the typestore") from None
    annotations = dict(REQUEST_HEADER_FIELDS) if with_request_header else {}
    for name, desc in fields:
        if name in annotations:
            raise ValueError(f"{msgtype}: field {name!r} collides with the service request header")
        annotations[name] = _field_type(desc, store, f"{msgtype}.{name}")
    class_name = msgtype.replace("/", "__") + ("__with_request_header" if with_request_header else "")
    return make_idl_struct(class_name, dds_type_name(msgtype), annotations)


def _field_type(desc, store, where: str):
    kind, detail = desc
    if kind == Nodetype.BASE:
        name, bound = detail
        if name == "string":
            return T.bounded_str[bound] if bound else str
        if name == "wstring":
            raise NotImplementedError(f"{where}: wstring fields are not supported by the DDS backend")
        return _PRIMITIVES[name]
    if kind == Nodetype.NAME:
        return idl_struct(detail, store)
    if kind == Nodetype.ARRAY:
        sub, length = detail
        return T.array[_field_type(sub, store, where), length]
    if kind == Nodetype.SEQUENCE:
        sub, bound = detail
        inner = _field_type(sub, store, where)
        return T.sequence[inner, bound] if bound else T.sequence[inner]
    raise ValueError(f"{where}: unsupported field kind {kind!r}")
