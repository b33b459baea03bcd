"""``mobile-o make-field-bag``: a synthetic field recording from the shapes world, with known truth.

A robot drives past markers, one station every :data:`HOLD` frames: a crate (a square of any colour), a
post (a circle of any colour) or a hazard sign (a red triangle, always alone), each in the centre of the
view, crates and posts sometimes with one more crate or post beside them, on a white, black or grey ground.
Two cameras see their own stations:

- ``/front/image_raw``: ``sensor_msgs/Image``, ``bgr8`` with rows padded to a 32-byte multiple plus 32;
- ``/rear/image_raw/compressed``: ``sensor_msgs/CompressedImage``, JPEG, format
  ``rgb8; jpeg compressed bgr8``;

and ``/odom`` (``nav_msgs/Odometry``) is recorded beside them. A few frames are broken on purpose
(:data:`CORRUPT`): data shorter than its header says, an unknown encoding, bytes that are no JPEG, and a
``compressedDepth`` image; one front frame has a zero header stamp. The folder gets ``tasks.yaml`` (the
questions the truth answers) and ``truth.jsonl`` (per camera frame: topic, index, times, which corruption,
the scene's caption and the true value of every question) next to the bag's own files.
"""

from __future__ import annotations

import json
import random
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from mobile_o_ros.shapes import world
from mobile_o_ros.shapes.world import Scene, Shape

FRONT = "/front/image_raw"
REAR = "/rear/image_raw/compressed"
ODOM = "/odom"
#: Frames a station stays in view.
HOLD = 3
SIZE = 256
#: Log time of the first message: 2026-01-01 00:00:00 UTC.
START_NS = 1_767_225_600 * 10**9
#: (topic, frame index) → how the frame is broken.
CORRUPT = {
    (FRONT, 5): "short data",
    (FRONT, 13): "unknown encoding",
    (REAR, 7): "not a JPEG",
    (REAR, 17): "compressedDepth",
}
ZERO_STAMP = {(FRONT, 9)}
TASKS_YAML = """\
# Questions about the field recording of `mobile-o make-field-bag`; truth.jsonl holds the true values.
caption: true
questions:
  - id: hazard
    question: is there a red triangle?
    type: bool
  - id: centre_shape
    question: what shape is in the centre?
    type: enum
    options: [circle, square, triangle]
  - id: shapes
    question: how many shapes are there?
    type: number
  - id: background
    question: what colour is the background?
    type: enum
    options: [white, black, grey]
"""


def station(rng: random.Random) -> Scene:
    """One marker in the centre (a hazard alone; a crate or post maybe with a neighbour)."""
    colours, sizes = list(world.COLOURS), list(world.SIZES)
    kind = rng.choice(("crate", "post", "hazard"))
    if kind == "hazard":
        objects = [Shape("triangle", "red", "centre", rng.choice(sizes))]
    else:
        objects = [
            Shape("square" if kind == "crate" else "circle", rng.choice(colours), "centre", rng.choice(sizes))
        ]
        if rng.random() < 0.5:
            side = rng.choice(("left", "right", "top", "bottom"))
            objects.append(
                Shape(rng.choice(("square", "circle")), rng.choice(colours), side, rng.choice(sizes))
            )
    return Scene(rng.choice(list(world.BACKGROUNDS)), tuple(objects))


def truth(scene: Scene) -> dict[str, Any]:
    """The true value of each question of :data:`TASKS_YAML`."""
    return {
        "hazard": any(o.shape == "triangle" for o in scene.objects),
        "centre_shape": next(o.shape for o in scene.objects if o.position == "centre"),
        "shapes": len(scene.objects),
        "background": scene.background,
    }


def _picture(scene: Scene, noise_seed: int) -> np.ndarray:
    rgb = world.render(scene, SIZE).astype(np.int16)
    noise = np.random.default_rng(noise_seed).normal(0, 2.0, rgb.shape).round().astype(np.int16)
    return np.clip(rgb + noise, 0, 255).astype(np.uint8)


def make_field_bag(
    out: Path, frames: int = 24, rate_hz: float = 5.0, seed: int = 0, storage: str = "mcap"
) -> dict:
    """Write the recording to ``out`` (a new rosbag2 folder); returns what was written."""
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    store = get_typestore(Stores.ROS2_HUMBLE)
    T = store.types
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    period = round(1e9 / rate_hz)
    rngs = {FRONT: random.Random(f"field:{seed}:front"), REAR: random.Random(f"field:{seed}:rear")}
    scenes: dict[str, Scene] = {}
    truth_lines: list[str] = []
    corrupt = other = 0

    def header(stamp_ns: int, frame_id: str) -> Any:
        return T["std_msgs/msg/Header"](
            stamp=T["builtin_interfaces/msg/Time"](sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
            frame_id=frame_id,
        )

    with Writer(out, version=9, storage_plugin=plugin) as bag:
        conns = {
            FRONT: bag.add_connection(FRONT, "sensor_msgs/msg/Image", typestore=store),
            REAR: bag.add_connection(REAR, "sensor_msgs/msg/CompressedImage", typestore=store),
            ODOM: bag.add_connection(ODOM, "nav_msgs/msg/Odometry", typestore=store),
        }
        for i in range(frames):
            for topic, offset in ((FRONT, 0), (REAR, period // 2)):
                if i % HOLD == 0:
                    scenes[topic] = station(rngs[topic])
                scene = scenes[topic]
                log_time = START_NS + i * period + offset
                stamp = 0 if (topic, i) in ZERO_STAMP else log_time - 5_000_000
                broken = CORRUPT.get((topic, i))
                rgb = _picture(scene, zlib.crc32(f"{seed}:{topic}:{i}".encode()))
                if topic == FRONT:
                    row = SIZE * 3
                    step = (row + 31) // 32 * 32 + 32
                    rows = np.zeros((SIZE, step), np.uint8)
                    rows[:, :row] = rgb[:, :, ::-1].reshape(SIZE, row)
                    data = rows.reshape(-1)
                    encoding = "bgr8"
                    if broken == "short data":
                        data = data[: data.size - 1000]
                    elif broken == "unknown encoding":
                        encoding = "h264"
                    msg = T["sensor_msgs/msg/Image"](
                        header=header(stamp, "front_camera_optical"),
                        height=SIZE,
                        width=SIZE,
                        encoding=encoding,
                        is_bigendian=0,
                        step=step,
                        data=data,
                    )
                    raw = store.serialize_cdr(msg, "sensor_msgs/msg/Image")
                else:
                    ok, buf = cv2.imencode(
                        ".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90]
                    )
                    assert ok
                    data, fmt = buf.reshape(-1), "rgb8; jpeg compressed bgr8"
                    if broken == "not a JPEG":
                        data = np.frombuffer(random.Random(i).randbytes(4000), np.uint8)
                    elif broken == "compressedDepth":
                        ok, png = cv2.imencode(".png", np.full((SIZE, SIZE), 1500, np.uint16))
                        data, fmt = (
                            np.concatenate([np.zeros(12, np.uint8), png.reshape(-1)]),
                            "16UC1; compressedDepth",
                        )
                    msg = T["sensor_msgs/msg/CompressedImage"](
                        header=header(stamp, "rear_camera_optical"), format=fmt, data=data
                    )
                    raw = store.serialize_cdr(msg, "sensor_msgs/msg/CompressedImage")
                bag.write(conns[topic], log_time, raw)
                corrupt += broken is not None
                truth_lines.append(
                    json.dumps(
                        {
                            "topic": topic,
                            "frame_index": i,
                            "log_time_ns": log_time,
                            "stamp_ns": stamp,
                            "corrupt": broken,
                            "scene": world.caption(scene),
                            "truth": truth(scene),
                        }
                    )
                )
            bag.write(
                conns[ODOM],
                START_NS + i * period + period // 4,
                store.serialize_cdr(_odometry(T, header, i, period), "nav_msgs/msg/Odometry"),
            )
            other += 1
    (out / "truth.jsonl").write_text("\n".join(truth_lines) + "\n")
    (out / "tasks.yaml").write_text(TASKS_YAML)
    return {
        "path": str(out),
        "storage": storage,
        "cameras": [FRONT, REAR],
        "frames": 2 * frames,
        "corrupt": corrupt,
        "other_topic": ODOM,
        "other_messages": other,
        "seed": seed,
    }


def _odometry(T: Any, header: Any, i: int, period: int) -> Any:
    """The robot's pose: driving along x at 0.5 m/s."""
    x = 0.5 * i * period / 1e9
    point = T["geometry_msgs/msg/Point"](x=x, y=0.0, z=0.0)
    quat = T["geometry_msgs/msg/Quaternion"](x=0.0, y=0.0, z=0.0, w=1.0)
    pose = T["geometry_msgs/msg/PoseWithCovariance"](
        pose=T["geometry_msgs/msg/Pose"](position=point, orientation=quat), covariance=np.zeros(36)
    )
    zero = T["geometry_msgs/msg/Vector3"](x=0.0, y=0.0, z=0.0)
    twist = T["geometry_msgs/msg/TwistWithCovariance"](
        twist=T["geometry_msgs/msg/Twist"](
            linear=T["geometry_msgs/msg/Vector3"](x=0.5, y=0.0, z=0.0), angular=zero
        ),
        covariance=np.zeros(36),
    )
    return T["nav_msgs/msg/Odometry"](
        header=header(START_NS + i * period, "odom"), child_frame_id="base_link", pose=pose, twist=twist
    )


def score(out_dir: Path, bag: Path) -> dict[str, Any]:
    """Compare an annotation run of a field bag with its ``truth.jsonl``: per task, values right of those
    answered about good frames; frames missing; corrupt frames without an error record."""
    truth = {}
    with (bag / "truth.jsonl").open() as f:
        for line in f:
            t = json.loads(line)
            truth[(t["topic"], t["frame_index"])] = t
    right: dict[str, int] = {}
    total: dict[str, int] = {}
    seen: set[tuple[str, int]] = set()
    errors: set[tuple[str, int]] = set()
    from mobile_o_ros.annotate.writer import JSONL, read_records

    for r in read_records(out_dir / JSONL):
        key = (r["topic"], r["frame_index"])
        seen.add(key)
        if r["error"]:
            errors.add(key)
            continue
        expected = truth[key]["truth"].get(r["task"])
        if r["task"] in truth[key]["truth"]:
            total[r["task"]] = total.get(r["task"], 0) + 1
            right[r["task"]] = right.get(r["task"], 0) + (r["value"] == expected)
    corrupt = {k for k, t in truth.items() if t["corrupt"]}
    typed = [t for t in total if t in ("hazard", "centre_shape", "background")]
    n_typed = sum(total[t] for t in typed)
    return {
        "per_task": {t: {"right": right[t], "of": total[t]} for t in total},
        "bool_enum_right_pct": round(100 * sum(right[t] for t in typed) / n_typed, 1) if n_typed else None,
        "frames": len(truth),
        "frames_missing": sorted(k for k in truth if k not in seen),
        "good_frames_failed": sorted(errors - corrupt),
        "corrupt_without_error": sorted(corrupt - errors),
    }
