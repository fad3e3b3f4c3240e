"""Quality-of-service profiles, independent of the backend (each backend maps them to its own QoS objects).

The three profiles the node uses follow the ROS 2 conventions (docs: ROBOTS_AND_ROS.md section 2):

| profile       | reliability | durability      | history      | used for                                    |
|---------------|-------------|-----------------|--------------|---------------------------------------------|
| `SENSOR_DATA` | best effort | volatile        | keep last 5  | cameras, joint states (rclpy's sensor data) |
| `RELIABLE`    | reliable    | volatile        | keep last 10 | trajectories, chunks, status (ROS default)  |
| `LATCHED`     | reliable    | transient local | keep last 1  | the instruction: a late joiner gets the last |
| `SERVICES`    | reliable    | volatile        | keep last 10 | service request/reply topics                 |

Matching rules are DDS's: a reliable reader does not match a best-effort writer, and a transient-local reader does not
match a volatile writer. A best-effort reader matches any writer.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from typing import ClassVar


class Reliability(str, enum.Enum):
    RELIABLE = "reliable"
    BEST_EFFORT = "best_effort"


class Durability(str, enum.Enum):
    VOLATILE = "volatile"
    TRANSIENT_LOCAL = "transient_local"


@dataclass(frozen=True)
class QoS:
    """Keep-last QoS: reliability, durability and history depth (the only knobs the runtime needs)."""

    reliability: Reliability = Reliability.RELIABLE
    durability: Durability = Durability.VOLATILE
    depth: int = 10

    SENSOR_DATA: ClassVar["QoS"]
    RELIABLE: ClassVar["QoS"]
    LATCHED: ClassVar["QoS"]
    SERVICES: ClassVar["QoS"]

    def __post_init__(self) -> None:
        object.__setattr__(self, "reliability", Reliability(self.reliability))
        object.__setattr__(self, "durability", Durability(self.durability))
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 1:
            raise ValueError(f"QoS.depth must be an int >= 1 (keep-last history), got {self.depth!r}")

    @property
    def reliable(self) -> bool:
        return self.reliability is Reliability.RELIABLE

    @property
    def transient_local(self) -> bool:
        return self.durability is Durability.TRANSIENT_LOCAL

    def with_depth(self, depth: int) -> "QoS":
        return replace(self, depth=depth)

    @classmethod
    def named(cls, name: str) -> "QoS":
        """The profile called `name` (case-insensitive): sensor_data, reliable, latched or services."""
        profiles = {"sensor_data": cls.SENSOR_DATA, "reliable": cls.RELIABLE, "latched": cls.LATCHED,
                    "services": cls.SERVICES}
        try:
            return profiles[name.lower()]
        except (KeyError, AttributeError):
            raise ValueError(f"unknown QoS profile {name!r}; valid: {sorted(profiles)}") from None


QoS.SENSOR_DATA = QoS(Reliability.BEST_EFFORT, Durability.VOLATILE, 5)
QoS.RELIABLE = QoS(Reliability.RELIABLE, Durability.VOLATILE, 10)
QoS.LATCHED = QoS(Reliability.RELIABLE, Durability.TRANSIENT_LOCAL, 1)
QoS.SERVICES = QoS(Reliability.RELIABLE, Durability.VOLATILE, 10)
