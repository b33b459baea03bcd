"""The run's outputs: ``annotations.jsonl`` (append-only, the checkpoint) and what is rebuilt from it.

``annotations.jsonl`` holds one record per (frame, task), appended and flushed as each task finishes and
synced to disk after each frame. A run that is killed leaves at most a half-written last line, which the
next run cuts off. Records of one topic are written in frame order, so the resume state is small: per topic,
the last frame index written and the tasks done at it (:class:`Checkpoint`).

At the end everything else is rebuilt from the JSONL, streaming: ``annotations.csv`` (one row per frame, one
column per task), an MCAP rosbag2 under ``bag/`` with ``mobile_o_ros/msg/FrameAnnotation`` messages on
``/annotations`` at each source frame's log time (and edited images on ``/annotations/<edit id>``), and the
contact sheet (:mod:`~mobile_o_ros.annotate.contact_sheet`). The bag writers cannot append, so a resumed run
gets whole outputs this way.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mobile_o_ros.annotate.tasks import Tasks, value_text

JSONL = "annotations.jsonl"
CSV = "annotations.csv"
BAG = "bag"
RUN = "run.json"
SUMMARY = "summary.json"
THUMBS = "thumbs"
EDITS = "edits"
ANNOTATION_TOPIC = "/annotations"
FRAME_ANNOTATION = "mobile_o_ros/msg/FrameAnnotation"
#: msg/FrameAnnotation.msg without its comments (a test keeps the two the same).
FRAME_ANNOTATION_MSG = """\
std_msgs/Header header
bool stamp_from_log_time
string source_topic
uint64 frame_index
string task
string type
string question
string answer
string value
string error
"""
#: The record's fields, in the order they are written.
FIELDS = (
    "topic",
    "frame_index",
    "task",
    "type",
    "question",
    "answer",
    "value",
    "error",
    "stamp_ns",
    "stamp_source",
    "log_time_ns",
    "frame_id",
    "model",
    "latency_ms",
)
#: Fields that make a record the same annotation in two runs (timings differ).
SAME = tuple(f for f in FIELDS if f != "latency_ms")


def topic_slug(topic: str) -> str:
    """A file-name form of a topic: ``/front/image_raw`` → ``front__image_raw``."""
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in topic.strip("/").replace("/", "__"))
    return slug or "root"


def thumb_path(topic: str, index: int) -> str:
    """The thumbnail of a frame, relative to the output folder."""
    return f"{THUMBS}/{topic_slug(topic)}/{index:08d}.jpg"


def edit_path(topic: str, index: int, edit_id: str) -> str:
    """The edited image of a frame, relative to the output folder."""
    return f"{EDITS}/{edit_id}/{topic_slug(topic)}/{index:08d}.png"


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records of a JSONL file, one at a time (a cut-off last line is skipped)."""
    if not path.is_file():
        return
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            try:
                yield json.loads(line)
            except ValueError:
                continue


@dataclass
class TopicProgress:
    """Per topic: the last frame index in the checkpoint and the tasks written for it."""

    last_index: int = -1
    tasks_at_last: set[str] = field(default_factory=set)


class Checkpoint:
    """``annotations.jsonl`` opened for appending, with what it already holds."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / JSONL
        self.progress: dict[str, TopicProgress] = {}
        self.records_before = 0
        self._repair()
        for record in read_records(self.path):
            self._note(record)
            self.records_before += 1
        self.file = self.path.open("ab")

    def _repair(self) -> None:
        """Cut a half-written last line (a run killed mid-write)."""
        if not self.path.is_file():
            return
        with self.path.open("rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            pos = size
            while pos > 0:
                step = min(65536, pos)
                f.seek(pos - step)
                block = f.read(step)
                nl = block.rfind(b"\n")
                if nl >= 0:
                    end = pos - step + nl + 1
                    break
                pos -= step
            else:
                end = 0
            if end != size:
                f.truncate(end)

    def _note(self, record: dict[str, Any]) -> None:
        p = self.progress.setdefault(record["topic"], TopicProgress())
        index = int(record["frame_index"])
        if index > p.last_index:
            p.last_index, p.tasks_at_last = index, {record["task"]}
        elif index == p.last_index:
            p.tasks_at_last.add(record["task"])

    def done(self, topic: str, index: int) -> set[str] | None:
        """The tasks of a frame already in the checkpoint: None when none, ``{"*"}`` for a frame before the
        last one written (all of its tasks)."""
        p = self.progress.get(topic)
        if p is None or index > p.last_index:
            return None
        if index < p.last_index:
            return {"*"}
        return p.tasks_at_last

    def append(self, record: dict[str, Any]) -> None:
        """Write one record and flush it to the operating system."""
        self.file.write((json.dumps({k: record.get(k) for k in FIELDS}, ensure_ascii=False) + "\n").encode())
        self.file.flush()
        self._note(record)

    def sync(self) -> None:
        """Push what was written to the disk (after each frame)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Sync and close."""
        if not self.file.closed:
            self.sync()
            self.file.close()


# ------------------------------------------------------------------------------------------- frames
def frames_of(records: Iterator[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    """Consecutive records of one frame, grouped (a frame's records are written together)."""
    group: list[dict[str, Any]] = []
    for record in records:
        if group and (record["topic"], record["frame_index"]) != (group[0]["topic"], group[0]["frame_index"]):
            yield group
            group = []
        group.append(record)
    if group:
        yield group


def write_csv(out_dir: Path, tasks: Tasks) -> int:
    """``annotations.csv`` from the JSONL: one row per frame, one column per task (the typed value; an
    edit's file); returns the rows written."""
    tmp = out_dir / (CSV + ".tmp")
    rows = 0
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["topic", "frame_index", "stamp_ns", "log_time_ns", "frame_id", "error", *tasks.ids])
        for group in frames_of(read_records(out_dir / JSONL)):
            first = group[0]
            by_task = {r["task"]: r for r in group}
            error = next((r["error"] for r in group if r.get("error")), "")
            cells = [value_text(by_task[t]["value"]) if t in by_task else "" for t in tasks.ids]
            writer.writerow(
                [
                    first["topic"],
                    first["frame_index"],
                    first["stamp_ns"],
                    first["log_time_ns"],
                    first["frame_id"],
                    error,
                    *cells,
                ]
            )
            rows += 1
    tmp.replace(out_dir / CSV)
    return rows


def annotation_typestore() -> Any:
    """A rosbags typestore with ROS 2's standard types and FrameAnnotation."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    store.register(get_types_from_msg(FRAME_ANNOTATION_MSG, FRAME_ANNOTATION))
    return store


def _header(store: Any, record: dict[str, Any]) -> Any:
    stamp = int(record["stamp_ns"] or 0)
    time_cls = store.types["builtin_interfaces/msg/Time"]
    header_cls = store.types["std_msgs/msg/Header"]
    return header_cls(
        stamp=time_cls(sec=stamp // 10**9, nanosec=stamp % 10**9), frame_id=record["frame_id"] or ""
    )


def frame_annotation(store: Any, record: dict[str, Any]) -> Any:
    """A record as a FrameAnnotation message of ``store``."""
    cls = store.types[FRAME_ANNOTATION]
    return cls(
        header=_header(store, record),
        stamp_from_log_time=record["stamp_source"] == "log_time",
        source_topic=record["topic"],
        frame_index=int(record["frame_index"]),
        task=record["task"],
        type=record["type"],
        question=record["question"] or "",
        answer=record["answer"] or "",
        value=value_text(record["value"]),
        error=record["error"] or "",
    )


def write_bag(out_dir: Path, tasks: Tasks) -> int:
    """The output rosbag2 (MCAP storage) under ``bag/``, rebuilt from the JSONL; returns its messages."""
    import cv2
    import numpy as np
    from rosbags.rosbag2 import StoragePlugin, Writer

    store = annotation_typestore()
    work = out_dir / (BAG + ".partial")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    tmp = work / BAG  # the writer names its storage file after the folder: bag/bag.mcap
    count = 0
    image_cls = store.types["sensor_msgs/msg/Image"]
    with Writer(tmp, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conn = writer.add_connection(ANNOTATION_TOPIC, FRAME_ANNOTATION, typestore=store)
        edit_conns = {
            e.id: writer.add_connection(
                f"{ANNOTATION_TOPIC}/{e.id}", "sensor_msgs/msg/Image", typestore=store
            )
            for e in tasks.edits
        }
        for record in read_records(out_dir / JSONL):
            time = int(record["log_time_ns"])
            msg = frame_annotation(store, record)
            writer.write(conn, time, store.serialize_cdr(msg, FRAME_ANNOTATION))
            count += 1
            if record["type"] == "edit" and not record["error"] and record["task"] in edit_conns:
                bgr = cv2.imread(str(out_dir / record["answer"]), cv2.IMREAD_COLOR)
                if bgr is None:
                    continue
                rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                image = image_cls(
                    header=_header(store, record),
                    height=rgb.shape[0],
                    width=rgb.shape[1],
                    encoding="rgb8",
                    is_bigendian=0,
                    step=rgb.shape[1] * 3,
                    data=rgb.reshape(-1),
                )
                writer.write(
                    edit_conns[record["task"]], time, store.serialize_cdr(image, "sensor_msgs/msg/Image")
                )
                count += 1
    shutil.rmtree(out_dir / BAG, ignore_errors=True)
    tmp.replace(out_dir / BAG)
    work.rmdir()
    return count


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write a JSON file whole (through a temporary file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
