"""Camera frames from recordings and image folders, streamed in log-time order with flat memory.

An input is a rosbag2 directory (``metadata.yaml``), a single ``.mcap`` or ``.db3`` file, a folder holding
``.mcap``/``.db3`` files but no ``metadata.yaml`` (a recording that never closed), a ROS 1 ``.bag``, or a
folder of images. Bags are read with rosbags' ``AnyReader``, one message at a time, several bags merged in
time order; message definitions come from the bag, else from ROS 2 Humble's standard types. An MCAP file
whose end is missing (a recording cut off) is read up to where it stops, and the rest is reported
(:attr:`Inputs.problems`). Only the frames that will be annotated are deserialized.

A folder of images is one "topic" named after the folder; its frames are the image files in name order
(sub-folders included), each with the file's modification time as its log time.
"""

from __future__ import annotations

import fnmatch
import heapq
import struct
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
STORAGE_SUFFIXES = (".mcap", ".db3")
MCAP_MAGIC = b"\x89MCAP0\r\n"


class InputError(ValueError):
    """An input that cannot be read as asked; one line that names it."""


@dataclass(frozen=True)
class TopicInfo:
    """A topic of the inputs: its type and message count."""

    name: str
    msgtype: str
    count: int

    @property
    def is_image(self) -> bool:
        """Whether its messages are camera frames."""
        return self.msgtype in IMAGE_TYPES


@dataclass
class Frame:
    """One message of an image topic, not yet deserialized."""

    topic: str
    msgtype: str
    log_time_ns: int
    #: Position among the topic's messages in the inputs (0 = first), whatever is selected.
    index: int
    #: Returns the deserialized message (bags) or the image file's path in its folder (folders).
    load: Callable[[], Any]
    #: An image file (folders); None for a bag message.
    path: Path | None = None


# ------------------------------------------------------------------------------------------- folders
def _same(value: Any) -> Any:
    return value


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


class FolderSource:
    """A folder of images: one topic (the folder's name), frames in file-name order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.topic = folder.resolve().name or str(folder)
        self.count = len(_image_files(folder))
        self.problems: list[str] = []

    def topics(self) -> list[TopicInfo]:
        """The folder as one image topic."""
        return [TopicInfo(self.topic, "image file", self.count)]

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, Callable[[], Any], Path | None]]:
        """(topic, type, log time, loader, path) per image file."""
        if self.topic not in topics:
            return
        for path in _image_files(self.folder):
            with suppress(OSError):
                name = str(path.relative_to(self.folder))
                yield self.topic, "image file", path.stat().st_mtime_ns, partial(_same, name), path

    def close(self) -> None:
        """Nothing to release."""


# ------------------------------------------------------------------------------------------- bags
class BagSource:
    """rosbag2 recordings (directories and storage files) or ROS 1 bags, merged by rosbags' AnyReader."""

    def __init__(self, paths: list[Path]) -> None:
        from rosbags.highlevel import AnyReader
        from rosbags.typesys import Stores, get_typestore

        self.paths = paths
        self.problems: list[str] = []
        self.reader = AnyReader(paths, default_typestore=get_typestore(Stores.ROS2_HUMBLE))
        self.reader.open()

    def topics(self) -> list[TopicInfo]:
        """Every topic with its type and message count."""
        return [
            TopicInfo(name, info.msgtype or "?", int(info.msgcount))
            for name, info in self.reader.topics.items()
        ]

    @property
    def start_time(self) -> int:
        """Log time of the earliest message (ns)."""
        return int(self.reader.start_time)

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, Callable[[], Any], Path | None]]:
        """(topic, type, log time, loader, None) of the topics' messages, in log-time order."""
        connections = [c for c in self.reader.connections if c.topic in topics]
        if not connections:
            return
        reader = self.reader
        for connection, timestamp, raw in reader.messages(connections=connections):
            yield (
                connection.topic,
                connection.msgtype,
                int(timestamp),
                partial(reader.deserialize, raw, connection.msgtype),
                None,
            )

    def first_message(self, topic: str) -> Any:
        """The first message of a topic, deserialized (None when it has none)."""
        connections = [c for c in self.reader.connections if c.topic == topic]
        for connection, _, raw in self.reader.messages(connections=connections):
            return self.reader.deserialize(raw, connection.msgtype)
        return None

    def close(self) -> None:
        """Close the reader."""
        with suppress(Exception):
            self.reader.close()


# ------------------------------------------------------------------------------------------- cut MCAP
@dataclass
class _Channel:
    topic: str
    msgtype: str
    count: int = 0


@dataclass
class _Scan:
    channels: dict[int, _Channel] = field(default_factory=dict)
    schemas: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    #: Byte offset where reading stopped, and why ("" when the data ended cleanly).
    stopped_at: int = 0
    reason: str = ""


class _Short(Exception):
    """The file ends inside a record."""


def _read(bio: BinaryIO, size: int) -> bytes:
    data = bio.read(size)
    if len(data) != size:
        raise _Short
    return data


def _string(rec: BinaryIO) -> str:
    return _read(rec, struct.unpack("<I", _read(rec, 4))[0]).decode()


class RecoveredMcap:
    """An MCAP file without its end (a recording that was cut off), read record by record up to where the
    data stops. Chunks are decompressed one at a time; a chunk cut in the middle is lost and reported."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self.scan = _Scan()
        for _ in self._records(self.scan, count_only=True):
            pass
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        self.typestore = get_typestore(Stores.ROS2_HUMBLE)
        types: dict[str, Any] = {}
        for name, encoding, data in self.scan.schemas.values():
            with suppress(Exception):
                types.update(
                    get_types_from_msg(data, name) if encoding == "ros2msg" else get_types_from_idl(data)
                )
        with suppress(Exception):
            self.typestore.register(types)
        read = sum(ch.count for ch in self.scan.channels.values())
        self.problems = (
            []
            if self.scan.reason == "complete"
            else [
                f"{path} is truncated ({self.scan.reason} at byte {self.scan.stopped_at} of {self.size}); "
                f"the {read} messages before the cut were read, the rest is lost"
            ]
        )

    def _records(self, scan: _Scan, count_only: bool = False) -> Iterator[tuple[int, int, bytes]]:
        """(channel id, log time, data) of every message until the file stops."""
        with self.path.open("rb") as f:
            try:
                if _read(f, 8) != MCAP_MAGIC:
                    raise InputError(f"{self.path} is not an MCAP file")
                while True:
                    start = f.tell()
                    head = f.read(9)
                    if len(head) < 9:
                        scan.stopped_at, scan.reason = start, "the file ends between records"
                        return
                    op, length = head[0], struct.unpack("<Q", head[1:])[0]
                    if op == 0x02:  # footer: the file is whole after all
                        scan.stopped_at, scan.reason = self.size, "complete"
                        return
                    if op == 0x06:
                        body = f.read(length)
                        yield from self._chunk(scan, body, count_only, whole=len(body) == length)
                        if len(body) < length:
                            scan.reason = "a chunk is cut short"
                            return
                    elif op in (0x03, 0x04, 0x05):
                        yield from self._record(scan, op, _read(f, length), count_only)
                    else:
                        f.seek(length, 1)
                        if f.tell() > self.size:
                            raise _Short
                    scan.stopped_at = f.tell()
            except _Short:
                scan.reason = "a record is cut short"
            except InputError:
                raise
            except Exception as err:  # a damaged record: stop there, report it
                scan.reason = f"unreadable record: {err}"

    def _chunk(
        self, scan: _Scan, body: bytes, count_only: bool, whole: bool
    ) -> Iterator[tuple[int, int, bytes]]:
        """The messages of a chunk; of a cut uncompressed chunk, those before the cut."""
        from rosbags.rosbag2.storage_mcap import decompress

        rec = BytesIO(body)
        try:
            _, _, size = struct.unpack("<QQQ", _read(rec, 24))
            crc = struct.unpack("<I", _read(rec, 4))[0]
            compression = _string(rec)
            length = struct.unpack("<Q", _read(rec, 8))[0]
        except _Short:
            return
        if whole:
            data = decompress(_read(rec, length), compression, size, crc)
        elif compression == "":
            data = rec.read(length)
        else:
            return  # a compressed chunk cut short cannot be read
        inner = BytesIO(data)
        while inner.tell() < len(data):
            try:
                op, length = struct.unpack("<BQ", _read(inner, 9))
                record = _read(inner, length)
            except _Short:
                return
            if op in (0x03, 0x04, 0x05):
                yield from self._record(scan, op, record, count_only)

    def _record(
        self, scan: _Scan, op: int, body: bytes, count_only: bool
    ) -> Iterator[tuple[int, int, bytes]]:
        rec = BytesIO(body)
        if op == 0x03:
            sid = struct.unpack("<H", _read(rec, 2))[0]
            name, encoding = _string(rec), _string(rec)
            data = _read(rec, struct.unpack("<I", _read(rec, 4))[0]).decode()
            scan.schemas[sid] = (name, encoding, data)
        elif op == 0x04:
            cid, sid = struct.unpack("<HH", _read(rec, 4))
            topic = _string(rec)
            scan.channels.setdefault(cid, _Channel(topic, scan.schemas.get(sid, ("?", "", ""))[0]))
        else:
            cid, _, log_time, _ = struct.unpack("<HIQQ", _read(rec, 22))
            if count_only:
                if cid in scan.channels:
                    scan.channels[cid].count += 1
            else:
                yield cid, log_time, body[22:]

    def topics(self) -> list[TopicInfo]:
        """The topics seen before the file stops, with the messages read of each."""
        merged: dict[str, TopicInfo] = {}
        for ch in self.scan.channels.values():
            old = merged.get(ch.topic)
            merged[ch.topic] = TopicInfo(ch.topic, ch.msgtype, ch.count + (old.count if old else 0))
        return list(merged.values())

    @property
    def start_time(self) -> int:
        """Log time of the first message (ns; 0 when none)."""
        for _, log_time, _ in self._records(_Scan(self.scan.channels, self.scan.schemas)):
            return log_time
        return 0

    def messages(self, topics: set[str]) -> Iterator[tuple[str, str, int, Callable[[], Any], Path | None]]:
        """(topic, type, log time, loader, None) in file order, up to where the file stops."""
        scan = _Scan(self.scan.channels, self.scan.schemas)
        for cid, log_time, raw in self._records(scan):
            ch = self.scan.channels.get(cid)
            if ch is None or ch.topic not in topics:
                continue
            yield (
                ch.topic,
                ch.msgtype,
                log_time,
                partial(self.typestore.deserialize_cdr, raw, ch.msgtype),
                None,
            )

    def first_message(self, topic: str) -> Any:
        """The first message of a topic, deserialized (None when it has none)."""
        for _, _, _, load, _ in self.messages({topic}):
            return load()
        return None

    def close(self) -> None:
        """Nothing held open between reads."""


def _has_mcap_header(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(8) == MCAP_MAGIC
    except OSError:
        return False


# ------------------------------------------------------------------------------------------- inputs
def classify(path: Path) -> tuple[str, list[Path]]:
    """What an input path is: (``rosbag2``, [paths]), (``rosbag1``, [path]) or (``folder``, [path]).

    Raises InputError for a missing path, or a folder that is neither a recording nor holds images.
    """
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_file():
        if path.suffix in STORAGE_SUFFIXES:
            return "rosbag2", [path]
        if path.suffix == ".bag":
            return "rosbag1", [path]
        raise InputError(
            f"{path} is not a recording: give a rosbag2 folder, an .mcap, .db3 or .bag file, or a folder "
            "of images"
        )
    if (path / "metadata.yaml").is_file():
        return "rosbag2", [path]
    storage = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in STORAGE_SUFFIXES)
    if storage:
        return "rosbag2", storage
    if _image_files(path):
        return "folder", [path]
    raise InputError(
        f"{path} is not a rosbag2 directory (no metadata.yaml, .mcap or .db3 files) nor a folder of images "
        f"({', '.join(IMAGE_SUFFIXES[:4])}, ...)"
    )


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


class Inputs:
    """Every input of one run: topics, selection by glob, and the frames of the selected image topics."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.sources: list[Any] = []
        self.notes: list[str] = []
        try:
            self._open(paths)
        except BaseException:
            self.close()
            raise

    def _open(self, paths: list[Path]) -> None:
        from rosbags.highlevel import AnyReader, AnyReaderError

        ros2: list[Path] = []
        ros1: list[Path] = []
        folders: list[Path] = []
        for path in paths:
            kind, parts = classify(path)
            if kind == "rosbag2" and parts != [path]:
                self.notes.append(
                    f"{path} has no metadata.yaml: reading its {len(parts)} storage file(s) directly"
                )
            {"rosbag2": ros2, "rosbag1": ros1, "folder": folders}[kind].extend(parts)
        healthy: list[Path] = []
        for part in ros2:
            try:
                with AnyReader([part]):
                    pass
                healthy.append(part)
            except (AnyReaderError, OSError, ValueError, KeyError, struct.error) as err:
                mcaps = (
                    [part] if part.suffix == ".mcap" else sorted(part.glob("*.mcap")) if part.is_dir() else []
                )
                if mcaps and all(_has_mcap_header(m) for m in mcaps):
                    for m in mcaps:
                        self.sources.append(RecoveredMcap(m))
                else:
                    raise InputError(f"cannot read {part}: {_first_line(err)}") from err
        for group in (healthy, ros1):
            if group:
                try:
                    self.sources.append(BagSource(group))
                except (AnyReaderError, OSError, ValueError) as err:
                    raise InputError(f"cannot read {', '.join(map(str, group))}: {_first_line(err)}") from err
        self.folders = [FolderSource(f) for f in folders]

    @property
    def problems(self) -> list[str]:
        """What could not be read (a truncated file's lost end), one line each."""
        return [p for s in self.sources for p in s.problems]

    def topics(self) -> list[TopicInfo]:
        """Every topic of the inputs (counts summed over bags), image folders last."""
        merged: dict[str, TopicInfo] = {}
        for source in self.sources:
            for t in source.topics():
                old = merged.get(t.name)
                merged[t.name] = TopicInfo(t.name, t.msgtype, t.count + (old.count if old else 0))
        bags = sorted(merged.values(), key=lambda t: t.name)
        return bags + [t for f in self.folders for t in f.topics()]

    def image_topics(self) -> list[TopicInfo]:
        """The topics whose messages are camera frames (and the image folders)."""
        return [t for t in self.topics() if t.is_image or t.msgtype == "image file"]

    def select(self, patterns: list[str] | None) -> list[str]:
        """The image topics that match any glob (default: every image topic); InputError naming the image
        topics when a pattern matches none of them."""
        images = [t.name for t in self.image_topics()]
        if not images:
            others = ", ".join(f"{t.name} ({t.msgtype})" for t in self.topics()) or "none"
            raise InputError(f"no Image or CompressedImage topics in the inputs; topics: {others}")
        if not patterns:
            return images
        chosen: list[str] = []
        for pattern in patterns:
            hits = [name for name in images if fnmatch.fnmatchcase(name, pattern)]
            if not hits:
                other = [t for t in self.topics() if fnmatch.fnmatchcase(t.name, pattern)]
                what = (
                    f" (it matches {', '.join(f'{t.name}, a {t.msgtype}' for t in other)})" if other else ""
                )
                raise InputError(
                    f"topic pattern {pattern!r} matches no image topic{what}; image topics: "
                    f"{', '.join(images)}"
                )
            chosen.extend(h for h in hits if h not in chosen)
        return [name for name in images if name in chosen]

    @property
    def start_time(self) -> int:
        """Log time of the earliest bag message (ns; 0 without bags)."""
        times = [s.start_time for s in self.sources]
        return min((t for t in times if t), default=0)

    def first_message(self, topic: str) -> Any:
        """The first message of a bag topic (for its encoding), or None."""
        for source in self.sources:
            if any(t.name == topic for t in source.topics()):
                msg = source.first_message(topic)
                if msg is not None:
                    return msg
        return None

    def frames(
        self, topics: list[str], start_ns: int | None = None, end_ns: int | None = None
    ) -> Iterator[Frame]:
        """The frames of ``topics`` with log time in [start, end), bags merged in log-time order, then
        folders. Indices count every message of the topic, also those outside the window."""
        wanted = set(topics)
        streams = [s.messages(wanted) for s in self.sources]
        merged = (
            heapq.merge(*streams, key=lambda m: m[2])
            if len(streams) > 1
            else iter(streams[0])
            if streams
            else iter(())
        )
        counts: dict[str, int] = {}
        for stream in (merged, *(f.messages(wanted) for f in self.folders)):
            for topic, msgtype, log_time, load, path in stream:
                index = counts.get(topic, 0)
                counts[topic] = index + 1
                if path is None and end_ns is not None and log_time >= end_ns:
                    break
                if start_ns is not None and path is None and log_time < start_ns:
                    continue
                yield Frame(topic, msgtype, log_time, index, load, path)

    def close(self) -> None:
        """Close every reader."""
        for source in self.sources:
            source.close()
        self.sources = []

    def __enter__(self) -> Inputs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
