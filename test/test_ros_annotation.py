"""Live annotation over real DDS: a field bag's frames published to the node get the answers of
``mobile-o annotate`` offline; bool changes fire events; requests come first and skipped frames are
counted."""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(600)]

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.msg", reason="generated interfaces missing (make setup)")

from annotate_support import embedded_export  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mobile_o_ros.msg import FrameAnnotation  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message  # noqa: E402
from ros_support import RosSide, ServerProcess, domain_id, running_server, wait_until  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from mobile_o_ros.annotate import fieldbag, writer  # noqa: E402
from mobile_o_ros.annotate.run import Options, annotate  # noqa: E402
from mobile_o_ros.cli import main  # noqa: E402
from mobile_o_ros.ros.client import MobileOClient  # noqa: E402

MODULE_INDEX = 7
DOMAIN = domain_id(MODULE_INDEX)
NS = f"/mo_an_{os.getpid()}"
CAM = f"{NS}_front/image_raw"
FRAMES = 18
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def model() -> Path:
    return embedded_export()


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("field") / "bag"
    assert main(["make-field-bag", str(path), "--frames", str(FRAMES)]) == 0
    return path


@pytest.fixture(scope="module")
def offline(bag: Path, model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("offline") / "out"
    annotate(
        Options([bag], bag / "tasks.yaml", out, topics=[fieldbag.FRONT], model=str(model)), lambda m: None
    )
    return list(writer.read_records(out / writer.JSONL))


@pytest.fixture(scope="module")
def server(model: Path, bag: Path, tmp_path_factory: pytest.TempPathFactory):
    params = {
        "camera_topics": [CAM],
        "image_reliability": "reliable",
        "image_qos_depth": 10,
        "annotation_tasks": str(bag / "tasks.yaml"),
        "annotation_rate_hz": 30.0,
        "max_steps": 1000,
        "diagnostics_period_s": 0.2,
    }
    with running_server(
        model, NS, DOMAIN, params, tmp_path_factory.mktemp("ros_server_an"), timeout=120
    ) as srv:
        assert "[mobile_o] Annotating" in srv.log()
        yield srv


@pytest.fixture(scope="module")
def ros(server: ServerProcess):
    with RosSide(DOMAIN, "mobile_o_an") as side:
        yield side


def _front_frames(bag: Path) -> list[Image]:
    from rosbags.highlevel import AnyReader

    with AnyReader([bag]) as reader:
        conns = [c for c in reader.connections if c.topic == fieldbag.FRONT]
        return [deserialize_message(bytes(raw), Image) for _, _, raw in reader.messages(connections=conns)]


def test_published_frames_get_the_offline_answers(
    ros: RosSide, bag: Path, offline: list[dict], server
) -> None:
    annotations = ros.collect(FrameAnnotation, f"{NS}/annotations", RELIABLE)
    events = ros.collect(FrameAnnotation, f"{NS}/annotation_events", RELIABLE)
    camera = ros.node.create_publisher(Image, CAM, RELIABLE)
    assert wait_until(lambda: camera.get_subscription_count() > 0, 20.0), "camera subscription not matched"
    assert wait_until(lambda: ros.node.count_subscribers(f"{NS}/annotations") >= 0, 1.0)
    time.sleep(0.5)  # the annotation subscriptions match the node's publishers
    tasks = 5
    for i, msg in enumerate(_front_frames(bag)):
        camera.publish(msg)
        done = lambda i=i: sum(m.frame_index == i for _, m in annotations) >= tasks
        assert wait_until(done, 60.0), f"frame {i}: {[m for _, m in annotations if m.frame_index == i]}"
    live = [m for _, m in annotations]
    assert len(live) == len(offline) == FRAMES * tasks
    for m, r in zip(live, offline, strict=True):
        assert (m.source_topic, m.frame_index, m.task, m.type, m.question) == (
            CAM,
            r["frame_index"],
            r["task"],
            r["type"],
            r["question"],
        )
        assert (m.answer, m.value) == (
            r["answer"] or "",
            writer.frame_annotation(writer.annotation_typestore(), r).value,
        )
        assert bool(m.error) == bool(r["error"]), (m.error, r["error"])
        assert m.header.frame_id == r["frame_id"] and m.stamp_from_log_time == (
            r["stamp_source"] == "log_time"
        )
        if r["stamp_source"] == "header":
            assert m.header.stamp.sec * 10**9 + m.header.stamp.nanosec == r["stamp_ns"]
    hazards = [r["value"] for r in offline if r["task"] == "hazard" and r["value"] is not None]
    changes = sum(a != b for a, b in itertools.pairwise(hazards))
    assert changes > 0 and wait_until(lambda: len(events) == changes, 10.0), (changes, len(events))
    assert all(m.task == "hazard" for _, m in events)


def test_requests_come_first_and_skipped_frames_are_counted(ros: RosSide, bag: Path, server) -> None:
    diagnostics = ros.collect(DiagnosticArray, "/diagnostics")
    camera = ros.node.create_publisher(Image, CAM, RELIABLE)
    assert wait_until(lambda: camera.get_subscription_count() > 0, 20.0)
    client = MobileOClient(NS, context=ros.context, wait_timeout=30.0)
    try:
        assert client.wait_for_services(30.0)
        frames = _front_frames(bag)
        stop = threading.Event()

        def stream() -> None:
            i = 0
            while not stop.is_set():
                camera.publish(frames[i % len(frames)])
                i += 1
                time.sleep(0.05)

        streamer = threading.Thread(target=stream, daemon=True)
        streamer.start()
        try:
            result = client.generate("a red circle on the left", steps=400, timeout=300)
        finally:
            stop.set()
            streamer.join(5)
        assert result.success, result.message
    finally:
        client.close()

    def skipped() -> int:
        for _, msg in reversed(diagnostics):
            values = {kv.key: kv.value for s in msg.status for kv in s.values}
            if f"annotation_skipped_busy.{CAM}" in values:
                return int(values[f"annotation_skipped_busy.{CAM}"])
        return -1

    assert wait_until(lambda: skipped() > 0, 10.0), skipped()
