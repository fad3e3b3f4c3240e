"""Input bags (rosbag2 sqlite3 / MCAP, split, zstd-compressed, ROS 1) and the output bag, through rosbags.

`open_bag(path)` accepts a rosbag2 directory (metadata.yaml + storage files), a directory of storage files without
metadata.yaml (read file by file, as `ros2 bag reindex` would), a single `.mcap` / `.db3` file, or a ROS 1 `.bag`
file. Every way a bag can be unusable becomes ONE `BagError` naming the bag and the reason (missing path, unknown
storage, non-CDR serialization, a non-ROS MCAP, a truncated or corrupt file), also when the problem only shows while
the messages are read.

`OutputBag` writes a rosbag2 bag (metadata version 9, readable by rosbags and `ros2 bag`): the input's topics copied
as they are (ROS 1 messages converted to CDR) plus the topics the replayed node published.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dreamzero_policy import msgs
from dreamzero_policy.errors import DreamZeroError

STORAGE_SUFFIXES = {".mcap": "mcap", ".db3": "sqlite3"}
BAG_FORMS = "a rosbag2 directory, a .mcap or .db3 file, a directory of those, or a ROS 1 .bag file"


class BagError(DreamZeroError, ValueError):
    """A bag cannot be replayed: `bag <path>: expected <what replay needs>, got <what the bag has> (<hint>)`."""


@dataclass(frozen=True)
class TopicSummary:
    msgtype: str
    count: int


@dataclass
class BagInfo:
    path: Path
    storage: str  # "mcap", "sqlite3" or "ros1"
    files: list[Path]
    has_metadata: bool
    start_ns: int
    end_ns: int  # the last message's log time (not rosbags' "end", which is one past it)
    message_count: int
    topics: dict[str, TopicSummary] = field(default_factory=dict)
    compression: str | None = None
    ros_distro: str | None = None

    @property
    def duration_s(self) -> float:
        return max(self.end_ns - self.start_ns, 0) / 1e9

    def topic_list(self, limit: int = 40) -> str:
        """`/a (pkg/msg/Type, 12), ...` for error messages."""
        items = [f"{name} ({t.msgtype}, {t.count})" for name, t in sorted(self.topics.items())]
        if len(items) > limit:
            items = items[:limit] + [f"... {len(items) - limit} more"]
        return ", ".join(items) if items else "no topics"

    def to_json(self) -> dict[str, Any]:
        return {"path": str(self.path), "storage": self.storage, "files": [str(f) for f in self.files],
                "has_metadata": self.has_metadata, "start_ns": self.start_ns, "end_ns": self.end_ns,
                "duration_s": self.duration_s, "messages": self.message_count, "compression": self.compression,
                "ros_distro": self.ros_distro,
                "topics": {k: {"type": v.msgtype, "count": v.count} for k, v in sorted(self.topics.items())}}


def _storage_paths(path: Path) -> tuple[list[Path], str, bool]:
    """(paths for AnyReader, storage, has metadata.yaml) of a bag path, or BagError."""
    if not path.exists():
        raise BagError(f"bag {path}", BAG_FORMS, "nothing at that path")
    if path.is_dir():
        if (path / "metadata.yaml").is_file():
            return [path], _storage_from_metadata(path), True
        files = sorted(p for p in path.iterdir() if p.suffix in STORAGE_SUFFIXES or p.suffix == ".bag")
        kinds = {p.suffix for p in files}
        if not files:
            content = sorted(p.name for p in path.iterdir())[:12]
            raise BagError(f"bag {path}", BAG_FORMS, f"a directory without metadata.yaml or storage files "
                           f"(it holds {content or 'nothing'})")
        if len(kinds) > 1:
            raise BagError(f"bag {path}", "storage files of one kind", f"{sorted(kinds)} mixed",
                           "pass one of them, or a directory with one kind")
        kind = kinds.pop()
        return files, ("ros1" if kind == ".bag" else STORAGE_SUFFIXES[kind]), False
    if path.suffix == ".bag":
        return [path], "ros1", False
    if path.suffix in STORAGE_SUFFIXES:
        return [path], STORAGE_SUFFIXES[path.suffix], False
    if path.suffix == ".zstd":
        raise BagError(f"bag {path}", BAG_FORMS, "a compressed storage file on its own",
                       "pass the bag directory: its metadata.yaml says how the file is compressed")
    raise BagError(f"bag {path}", BAG_FORMS, f"an unsupported storage format {path.suffix or '(no suffix)'!r}",
                   "rosbag2 storage plugins that replay reads: mcap, sqlite3")


def _storage_from_metadata(path: Path) -> str:
    import yaml

    try:
        info = yaml.safe_load((path / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
        return str(info.get("storage_identifier", "sqlite3"))
    except Exception:  # the reader reports a broken metadata.yaml with its own words
        return "unknown"


def _mcap_description(path: Path) -> str:
    """Profile and encodings of an MCAP file, for the 'not a ROS 2 bag' error."""
    try:
        from mcap.reader import make_reader

        with open(path, "rb") as f:
            reader = make_reader(f)
            header = reader.get_header()
            summary = reader.get_summary()
            encodings = sorted({c.message_encoding for c in summary.channels.values()}) if summary else []
            schemas = sorted({s.encoding for s in summary.schemas.values()}) if summary else []
        return (f"an MCAP file with profile {header.profile!r}, message encoding {encodings or '?'}, schema "
                f"encoding {schemas or '?'}")
    except Exception as e:
        return f"an MCAP file that is not a rosbag2 recording ({type(e).__name__}: {e})"


def _explain(path: Path, storage: str, files: Sequence[Path], error: BaseException) -> BagError:
    """A rosbags / sqlite / OS error while opening or reading -> one BagError with the reason and a hint."""
    text = " ".join(str(a) for a in error.args) if error.args else type(error).__name__
    text = text.replace("\n", " ")
    if len(text) > 300:
        text = text[:300] + "..."
    where = f"bag {path}"
    if "Profile is not ros2" in text:
        return BagError(where, "a rosbag2 MCAP file (profile 'ros2', CDR messages)", _mcap_description(files[0]),
                        "this is not a ROS 2 bag; convert it to rosbag2 first")
    if "Serialization format" in text:
        return BagError(where, "CDR serialization (what every ROS 2 rmw writes)", text,
                        "metadata.yaml names a serialization format replay cannot decode")
    if "Storage plugin" in text or "Unrecognized storage" in text:
        return BagError(where, "storage mcap or sqlite3", text)
    if "Compression format" in text:
        return BagError(where, "no compression or zstd", text)
    if "magic" in text.lower() or "malformed" in text.lower() or "not a database" in text.lower() \
            or isinstance(error, (sqlite3.DatabaseError, EOFError)) or "truncat" in text.lower() \
            or "unexpected end" in text.lower() or "Invalid" in text:
        return BagError(where, "a complete, readable bag", f"{type(error).__name__}: {text}",
                        "the file is truncated or corrupt (an interrupted recording?); `ros2 bag reindex` may "
                        "recover an MCAP whose summary is missing")
    if "metadata" in text.lower() or isinstance(error, FileNotFoundError):
        return BagError(where, "a readable metadata.yaml and every file it lists", text)
    if "no type definitions" in text or "Could not parse" in text or "hash mismatch" in text:
        return BagError(where, "message definitions rosbags can parse", text)
    return BagError(where, "a bag rosbags can read", f"{type(error).__name__}: {text}")


def _reader_errors() -> tuple[type[BaseException], ...]:
    from rosbags.highlevel import AnyReaderError
    from rosbags.rosbag1 import ReaderError as Reader1Error
    from rosbags.rosbag2 import ReaderError as Reader2Error

    errors: list[type[BaseException]] = [AnyReaderError, Reader1Error, Reader2Error, sqlite3.Error, OSError,
                                         EOFError, KeyError, ValueError, AssertionError]
    try:
        from rosbags.serde import SerdeError

        errors.append(SerdeError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errors)


class InputBag:
    """An open input bag (a context manager). `messages()` yields (topic, msgtype, log time ns, raw bytes)."""

    def __init__(self, path: str | Path):
        from rosbags.highlevel import AnyReader

        self.path = Path(path)
        self.files, storage, has_metadata = _storage_paths(self.path)
        self._errors = _reader_errors()
        try:
            self.reader = AnyReader(self.files, default_typestore=msgs.typestore())
            self.reader.open()
        except BagError:
            raise
        except self._errors as e:
            raise _explain(self.path, storage, self.files, e) from None
        self.is_ros1 = not self.reader.is2
        try:
            self.info = self._summarise(storage, has_metadata)
        except self._errors as e:
            self.close()
            raise _explain(self.path, storage, self.files, e) from None

    def _summarise(self, storage: str, has_metadata: bool) -> BagInfo:
        reader = self.reader
        topics = {name: TopicSummary(info.msgtype or "(several types)", int(info.msgcount))
                  for name, info in reader.topics.items()}
        count = int(reader.message_count)
        start = int(reader.start_time) if count else 0
        end = int(reader.end_time) - 1 if count else 0
        first = reader.readers[0]
        compression = getattr(first, "compression_format", None) if not self.is_ros1 else None
        distro = getattr(first, "ros_distro", None) if not self.is_ros1 else None
        storage_files = [p for f in self.files for p in ([f] if f.is_file() else sorted(
            q for q in f.iterdir() if q.name != "metadata.yaml" and not q.name.endswith(("-shm", "-wal"))))]
        return BagInfo(self.path, storage, storage_files, has_metadata, start, end, count, topics,
                       compression or None, distro)

    @property
    def typestore(self):
        return self.reader.typestore

    def connections(self, topics: Iterable[str] | None = None) -> list:
        wanted = None if topics is None else set(topics)
        return [c for c in self.reader.connections if wanted is None or c.topic in wanted]

    def messages(self, topics: Iterable[str] | None = None, start_ns: int | None = None,
                 stop_ns: int | None = None) -> Iterator[tuple[Any, int, bytes]]:
        """(connection, log time ns, raw bytes) in log-time order; BagError if the file breaks while reading."""
        connections = self.connections(topics)
        if topics is not None and not connections:
            return
        try:
            for connection, t, raw in self.reader.messages(connections=connections or (), start=start_ns,
                                                           stop=stop_ns):
                yield connection, int(t), raw
        except self._errors as e:
            raise _explain(self.path, self.info.storage, self.files, e) from None

    def deserialize(self, raw: bytes, msgtype: str, topic: str = "") -> Any:
        try:
            return self.reader.deserialize(raw, msgtype)
        except self._errors as e:
            raise BagError(f"bag {self.path}: topic {topic or '?'}", f"a decodable {msgtype} message",
                           f"{type(e).__name__}: {e}") from None

    def close(self) -> None:
        if getattr(self, "reader", None) is not None and self.reader.stack is not None:
            self.reader.close()

    def __enter__(self) -> InputBag:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_bag(path: str | Path) -> InputBag:
    return InputBag(path)


class OutputBag:
    """A rosbag2 bag (metadata version 9) with the input's topics and the node's output topics.

    `storage`: "mcap" or "sqlite3". Connections are added on first use. Topics whose type definition cannot be
    generated (a bag without embedded definitions of a non-standard type) are skipped and listed in `skipped`.
    """

    def __init__(self, path: Path, storage: str, source: InputBag | None = None,
                 custom_data: dict[str, str] | None = None):
        from rosbags.rosbag2 import StoragePlugin, Writer

        plugins = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
        self.path, self.storage = Path(path), storage
        self.writer = Writer(self.path, version=9, storage_plugin=plugins[storage])
        for key, value in (custom_data or {}).items():
            self.writer.set_custom_data(key, str(value))
        self.writer.open()
        self._source = source
        self._connections: dict[tuple[str, str], Any] = {}
        self.skipped: dict[str, str] = {}
        self.counts: dict[str, int] = {}
        self.types: dict[str, str] = {}

    def _input_connection(self, connection) -> tuple[Any, Any] | None:
        """(output connection, raw -> CDR converter) of an input connection; None for a skipped topic."""
        key = (connection.topic, connection.msgtype)
        if key in self._connections:
            return self._connections[key]
        source, msgtype = self._source, connection.msgtype
        store, convert = source.typestore, None
        if source.is_ros1:
            store, convert = self._ros1_converter(msgtype)
        qos = list(getattr(connection.ext, "offered_qos_profiles", []) or [])
        entry = None
        try:
            entry = (self.writer.add_connection(connection.topic, msgtype, typestore=store,
                                                offered_qos_profiles=qos), convert)
        except Exception as e:  # no definition for this type anywhere: keep the rest of the bag
            self.skipped[connection.topic] = f"{msgtype}: {type(e).__name__}: {e}"
        self._connections[key] = entry
        return entry

    def _ros1_converter(self, msgtype: str):
        """ROS 1 messages of a standard type become the ROS 2 definition (std_msgs/Header loses seq, ...); other
        types keep the bag's own definition, serialized as CDR."""
        source = self._source.typestore
        target = msgs.typestore()
        if msgtype in target.types:
            from rosbags.convert.converter import migrate_message

            cache: dict = {}
            return target, lambda raw: target.serialize_cdr(
                migrate_message(source, target, msgtype, msgtype, cache, source.deserialize_ros1(raw, msgtype)),
                msgtype)
        return source, lambda raw: source.ros1_to_cdr(raw, msgtype)

    def copy(self, connection, t_ns: int, raw: bytes) -> None:
        """An input message, as it is (ROS 1: converted to CDR)."""
        entry = self._input_connection(connection)
        if entry is None:
            return
        out, convert = entry
        data = raw
        if convert is not None:
            try:
                data = bytes(convert(raw))
            except Exception as e:  # one unconvertible message: the topic is incomplete, say so
                self.skipped.setdefault(connection.topic, f"{connection.msgtype}: a message at {t_ns} ns could "
                                        f"not be converted to CDR ({type(e).__name__}: {e})")
                return
        self._write(out, connection.topic, connection.msgtype, t_ns, data)

    def write_output(self, topic: str, msgtype: str, t_ns: int, cdr: bytes) -> None:
        """A message the node published (CDR bytes of dreamzero_policy.msgs.typestore())."""
        key = (topic, msgtype)
        if key not in self._connections:
            self._connections[key] = (self.writer.add_connection(topic, msgtype, typestore=msgs.typestore()), None)
        self._write(self._connections[key][0], topic, msgtype, t_ns, cdr)

    def _write(self, connection, topic: str, msgtype: str, t_ns: int, data: bytes) -> None:
        self.writer.write(connection, t_ns, data)
        self.counts[topic] = self.counts.get(topic, 0) + 1
        self.types[topic] = msgtype

    def close(self) -> None:
        self.writer.close()

    def summary(self) -> dict[str, Any]:
        return {"path": str(self.path), "storage": self.storage, "metadata_version": 9,
                "topics": {t: {"type": self.types[t], "count": n} for t, n in sorted(self.counts.items())},
                "skipped_topics": dict(self.skipped)}
