"""Integration tests over real DDS, second server: compressed cameras (reliable QoS), the continuous
question, ``busy_policy: reject``, the incompatible-QoS warning and parameter validation.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")

from mobile_o_ros.msg import SceneAnswer  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_support import RosSide, ServerProcess, domain_id, report_metrics, running_server, wait_until  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from mobile_o_ros.ros import images  # noqa: E402

MODULE_INDEX = 2
DOMAIN = domain_id(MODULE_INDEX)
NS = f"/mo_ct_{os.getpid()}"
CAM = f"{NS}_cam/image_raw"
RATE_HZ = 2.0
ANSWERS = 12  # answers test_continuous_question_publishes_at_its_rate waits for
QUESTION = "What do you see?"
METRICS: dict[str, object] = {}

PARAMS = {
    "camera_topics": [CAM],
    "use_compressed": True,
    "image_reliability": "reliable",
    "busy_policy": "reject",
    "max_new_tokens": 4,
    "continuous_question": QUESTION,
    "continuous_rate_hz": RATE_HZ,
    "max_frame_age_s": 5.0,
}
RELIABLE = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(tiny_export, NS, DOMAIN, PARAMS, tmp_path_factory.mktemp("ros_server_ct")) as srv:
        yield srv


@pytest.fixture(scope="module")
def ros(server: ServerProcess):
    with RosSide(DOMAIN, "mobile_o_ct") as side:
        yield side


@pytest.fixture(scope="module")
def client(ros: RosSide):
    with ros.client(NS) as c:
        yield c
    report_metrics(__name__, METRICS)


@pytest.fixture(scope="module")
def camera(ros: RosSide):
    """A reliable CompressedImage publisher on <CAM>/compressed (the node subscribes there)."""
    pub = ros.node.create_publisher(CompressedImage, f"{CAM}/compressed", RELIABLE)
    assert wait_until(lambda: pub.get_subscription_count() > 0, 15.0), "compressed subscription not matched"
    return pub


def picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((60, 80, 3), np.uint8)
    img[:, :40] = rng.integers(0, 256, 3)
    img[:, 40:] = rng.integers(0, 256, 3)
    return img


def stamped(sec: int, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, 42
    return h


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_frames(client, camera, fmt: str) -> None:
    rgb = picture(1)
    msg = images.rgb_to_compressed(rgb, fmt, stamped(700 + len(fmt), f"cam_{fmt}"))
    camera.publish(msg)
    time.sleep(0.3)
    resp = client.ask("What is in the image?", max_new_tokens=4)
    assert resp.success, resp.message
    assert (resp.image_header.frame_id, resp.image_header.stamp.sec) == (
        msg.header.frame_id,
        msg.header.stamp.sec,
    )
    decoded = cv2.cvtColor(
        cv2.imdecode(np.frombuffer(bytes(msg.data), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB
    )
    inline = client.ask("What is in the image?", image=decoded, max_new_tokens=4)
    assert inline.success and inline.answer == resp.answer  # the node decoded the same pixels
    edit = client.edit("make it red", steps=2)
    assert edit.success and edit.image.header.frame_id == msg.header.frame_id


def test_undecodable_frame_is_reported(client, camera) -> None:
    camera.publish(CompressedImage(header=stamped(1, "bad"), format="jpeg", data=b"\x00" * 64))
    time.sleep(0.3)
    resp = client.ask("What is in the image?")
    assert not resp.success and "cannot decode compressed frame from camera" in resp.message


def test_continuous_question_publishes_at_its_rate(ros, camera) -> None:
    answers = ros.collect(SceneAnswer, f"{NS}/answer", RELIABLE)
    sent: dict[int, str] = {}
    stop = threading.Event()

    def publish() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            h = stamped(10_000 + i, f"cont_{i}")
            sent[h.stamp.sec] = h.frame_id
            camera.publish(images.rgb_to_compressed(picture(i % 5), "jpeg", h))
            time.sleep(1 / 15)

    thread = threading.Thread(target=publish, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: len(answers) > 0, 30.0)  # warm-up
        answers.clear()
        t0 = time.monotonic()
        # A count within a generous deadline: a loaded machine runs the timer late (rcl then skips the
        # periods it missed), which slows the answers but never speeds them up.
        assert wait_until(lambda: len(answers) >= ANSWERS, 6 * ANSWERS / RATE_HZ), len(answers)
        window = time.monotonic() - t0
        counted = len(answers)
    finally:
        stop.set()
        thread.join(2)
    latencies = [m.latency_ms for _, m in answers]
    METRICS["continuous"] = {
        "configured_hz": RATE_HZ,
        "measured_hz": round(counted / window, 3),
        "answers": counted,
        "median_latency_ms": round(float(np.median(latencies)), 1),
    }
    # and never faster than the configured rate (a tick at each end, one answer on its way at the start)
    assert counted <= RATE_HZ * window + 2, METRICS["continuous"]
    for _, m in answers:
        assert m.question == QUESTION and m.camera == CAM and m.latency_ms > 0
        assert sent.get(m.header.stamp.sec) == m.header.frame_id  # the header of the frame it answered


def test_continuous_stops_when_frames_get_stale(ros, camera, server) -> None:
    """max_frame_age_s (5 s here): no new frames → a tick skips the question, and no answer follows."""
    answers = ros.collect(SceneAnswer, f"{NS}/answer", RELIABLE)
    mark = len(server.log())
    camera.publish(images.rgb_to_compressed(picture(3), "jpeg", stamped(1, "last_frame")))
    # A tick that skips had no question in flight (a tick defers while one runs), and the later ones skip too.
    assert server.wait_for_log("continuous question skipped: latest frame on camera", 60.0, start=mark)
    time.sleep(0.5)  # an answer published just before the skip may still be on its way
    answers.clear()
    time.sleep(2 / RATE_HZ)  # two more ticks
    assert answers == []


def test_reject_policy_answers_busy(client, ros, camera) -> None:
    seen = ros.collect(
        Image, f"{NS}/generated_image", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    )
    time.sleep(0.5)
    futures = [
        client.call_async("generate_image", client.generate_request(f"cube {i}", steps=4, seed=i))
        for i in range(10)
    ]
    assert wait_until(lambda: all(f.done() for f in futures), 60.0, 0.02)
    responses = [f.result() for f in futures]
    ok = [r for r in responses if r.success]
    busy = [r for r in responses if not r.success]
    assert len(ok) >= 1 and len(busy) >= 1 and len(ok) + len(busy) == 10
    assert all("busy" in r.message and "busy_policy=reject" in r.message for r in busy), {
        r.message for r in busy
    }
    assert wait_until(lambda: len(seen) == len(ok), 5.0) and len(seen) == len(ok)
    METRICS["reject_10"] = {"answered": len(ok), "busy": len(busy)}


def test_incompatible_qos_is_warned(ros, server) -> None:
    mark = len(server.log())
    ros.node.create_publisher(
        CompressedImage, f"{CAM}/compressed", QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)
    )
    assert server.wait_for_log(f"Incompatible QoS on {CAM}/compressed", 10.0, start=mark), server.log()[mark:]
    assert "RELIABILITY" in server.log()[mark:]


def _set(ros: RosSide, name: str, value: ParameterValue):
    req = SetParameters.Request(parameters=[Parameter(name=name, value=value)])
    return ros.call(SetParameters, f"{NS}/mobile_o/set_parameters", req).results[0]


def test_parameters_are_range_checked_and_dynamic(ros, client) -> None:
    r = _set(ros, "max_steps", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=100000))
    assert not r.successful
    r = _set(ros, "busy_policy", ParameterValue(type=ParameterType.PARAMETER_STRING, string_value="drop"))
    assert not r.successful and "one of queue, reject" in r.reason
    r = _set(ros, "max_steps", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=3))
    assert r.successful
    resp = client.generate("cube", steps=4)
    assert not resp.success and "exceeds max_steps 3" in resp.message
    r = _set(ros, "max_steps", ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=50))
    assert r.successful and client.generate("cube", steps=4).success


def test_zz_lifecycle_shutdown_ends_the_process(ros, server) -> None:
    """Last test of the module: the shutdown transition (active → finalized) ends `mobile-o serve`, rc 0."""
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState

    req = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVE_SHUTDOWN))
    assert ros.call(ChangeState, f"{NS}/mobile_o/change_state", req).success
    assert server.proc is not None
    assert server.proc.wait(15) == 0, server.log()[-2000:]
    log = server.log()
    assert "[mobile_o] Shutting down..." in log and "Shut down (finalized)" in log
