"""Integration tests over real DDS (loopback): ``mobile-o serve`` in its own process serving the tiny export.

Policy ``queue`` with a small ``max_queue``; two raw cameras. Covers every service and action, header
propagation, the image encodings, bad inputs, cancel, the lifecycle, the queue under 30 simultaneous
requests, diagnostics and the ``mobile-o ros`` verbs. Measurements are printed (run with ``-s``) and,
when ``MOBILE_O_ROS_METRICS`` names a file, appended to it as JSON lines.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import statistics
import subprocess
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(600)]

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")

from action_msgs.msg import GoalStatus  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState, GetState  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_support import (  # noqa: E402
    LOOPBACK_ENV,
    RosSide,
    ServerProcess,
    domain_id,
    report_metrics,
    running_server,
    serve_command,
    wait_until,
)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from mobile_o_ros.ros import images  # noqa: E402
from mobile_o_ros.ros.client import EditRequest, GenerateRequest, MobileOClient, Status  # noqa: E402

MODULE_INDEX = 1
DOMAIN = domain_id(MODULE_INDEX)
NS = f"/mo_it_{os.getpid()}"
FRONT = f"{NS}_cam/front/image_raw"
REAR = f"{NS}_cam/rear/image_raw"
MAX_QUEUE = 3
MAX_STEPS = 40
METRICS: dict[str, object] = {}

PARAMS = {
    "camera_topics": [FRONT, REAR],
    "busy_policy": "queue",
    "max_queue": MAX_QUEUE,
    "max_steps": MAX_STEPS,
    "default_steps": 2,
    "max_new_tokens": 6,
    "generated_frame_id": "mobile_o_gen",
    "diagnostics_period_s": 0.5,
}


# ============================================================================================ fixtures
@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(tiny_export, NS, DOMAIN, PARAMS, tmp_path_factory.mktemp("ros_server")) as srv:
        yield srv


@pytest.fixture(scope="module")
def ros(server: ServerProcess):
    with RosSide(DOMAIN) as side:
        yield side


@pytest.fixture(scope="module")
def client(ros: RosSide):
    with ros.client(NS) as c:
        yield c
    report_metrics(__name__, METRICS)


@pytest.fixture(scope="module")
def cameras(ros: RosSide):
    pubs = {cam: ros.node.create_publisher(Image, cam, 10) for cam in (FRONT, REAR)}
    return pubs


def header(sec: int, frame_id: str) -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = sec, 123456789
    return h


def send_frame(pub, msg) -> None:
    """Publish a frame once the node's subscription matched (best effort, latest kept)."""
    assert wait_until(lambda: pub.get_subscription_count() > 0, 15.0), "camera subscription not matched"
    for _ in range(3):
        pub.publish(msg)
        time.sleep(0.03)
    time.sleep(0.1)


def picture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8)
    img[: h // 2] = rng.integers(0, 256, 3)
    img[h // 2 :] = rng.integers(0, 256, 3)
    return img


def same_header(a, b) -> bool:
    return (a.frame_id, a.stamp.sec, a.stamp.nanosec) == (b.frame_id, b.stamp.sec, b.stamp.nanosec)


# ============================================================================================ graph
def test_graph_has_services_actions_and_topics(ros: RosSide, client: MobileOClient) -> None:
    from rclpy.action import get_action_names_and_types

    def graph_ok() -> bool:
        services = dict(ros.node.get_service_names_and_types())
        actions = dict(get_action_names_and_types(ros.node))
        topics = dict(ros.node.get_topic_names_and_types())
        return (
            services.get(f"{NS}/ask") == ["mobile_o_ros/srv/AskScene"]
            and services.get(f"{NS}/generate_image") == ["mobile_o_ros/srv/GenerateImage"]
            and services.get(f"{NS}/edit_image") == ["mobile_o_ros/srv/EditImage"]
            and actions.get(f"{NS}/ask") == ["mobile_o_ros/action/AskScene"]
            and actions.get(f"{NS}/generate_image") == ["mobile_o_ros/action/GenerateImage"]
            and actions.get(f"{NS}/edit_image") == ["mobile_o_ros/action/EditImage"]
            and topics.get(f"{NS}/answer") == ["mobile_o_ros/msg/SceneAnswer"]
            and topics.get(f"{NS}/generated_image") == ["sensor_msgs/msg/Image"]
            and topics.get("/diagnostics") == ["diagnostic_msgs/msg/DiagnosticArray"]
            and topics.get(FRONT) == ["sensor_msgs/msg/Image"]
        )

    assert wait_until(graph_ok, 15.0), (
        ros.node.get_service_names_and_types(),
        ros.node.get_topic_names_and_types(),
    )
    state = ros.call(GetState, f"{NS}/mobile_o/get_state", GetState.Request())
    assert state.current_state.label == "active"


# ============================================================================================ services
@pytest.mark.parametrize(
    "encoding",
    ["rgb8", "bgr8", "mono8", "rgba8", "padded_bgr8", "yuv422", "bayer_rggb8", "mono16", "16UC1"],
)
def test_ask_camera_frame_in_every_encoding(client, cameras, encoding: str) -> None:
    """The camera frame's header comes back, and the model sees the same pixels as an inline rgb8 image
    (a USB camera's yuv422, a machine-vision camera's bayer, a thermal camera's mono16 included)."""
    rgb = picture(seed=3)
    if encoding in ("yuv422", "bayer_rggb8", "mono16", "16UC1"):
        msg = images.rgb_to_raw(rgb, encoding, pad=4)
        rgb = images.image_to_rgb(msg)  # what the decoder makes of it
    elif encoding == "mono8":
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        rgb = np.repeat(gray[:, :, None], 3, axis=2)
        msg = images.array_to_image(gray, "mono8")
    elif encoding == "bgr8":
        msg = images.array_to_image(rgb[:, :, ::-1], "bgr8")
    elif encoding == "padded_bgr8":
        msg = images.array_to_image(rgb[:, :, ::-1], "bgr8", pad=13)
    elif encoding == "rgba8":
        msg = images.array_to_image(np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]), "rgba8")
    else:
        msg = images.array_to_image(rgb, "rgb8")
    msg.header = header(1000 + len(encoding), f"front_optical_{encoding}")
    send_frame(cameras[FRONT], msg)
    t0 = time.monotonic()
    resp = client.ask("What is in the image?", camera=FRONT, max_new_tokens=6)
    METRICS.setdefault("ask_camera_ms", []).append(round((time.monotonic() - t0) * 1000, 1))
    assert resp.success and resp.status == Status.OK, resp.message
    assert same_header(resp.image_header, msg.header)
    assert resp.num_tokens >= 1 and resp.latency_ms > 0
    inline = client.ask("What is in the image?", image=rgb, max_new_tokens=6)
    assert inline.success, inline.message
    assert inline.answer == resp.answer  # greedy: the same pixels give the same answer


def test_ask_default_camera_and_inline_header(client, cameras) -> None:
    msg = images.array_to_image(picture(seed=5), "rgb8")
    msg.header = header(77, "front_default")
    send_frame(cameras[FRONT], msg)
    resp = client.ask("Describe it.")  # empty camera = the first camera_topics entry
    assert resp.success and same_header(resp.image_header, msg.header)
    inline = images.rgb_to_image(picture(seed=6), header(88, "inline_frame"))
    resp = client.ask("Describe it.", image=inline)
    assert resp.success and same_header(resp.image_header, inline.header)


def test_generate_service(client, ros) -> None:
    seen = ros.collect(
        Image, f"{NS}/generated_image", QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
    )
    time.sleep(0.5)
    latencies = []
    for seed in (1, 1, 2):
        t0 = time.monotonic()
        resp = client.generate(
            GenerateRequest("a red cube on a table", steps=2, guidance_scale=1.5, seed=seed)
        )
        latencies.append((time.monotonic() - t0) * 1000)
        assert resp.success and resp.status == Status.OK and resp.steps_done == 2, resp.message
        assert (resp.image.encoding, resp.image.width, resp.image.height) == ("rgb8", 512, 512)
        assert resp.seed == seed
        assert resp.image.header.frame_id == "mobile_o_gen"
        assert abs(resp.image.header.stamp.sec - time.time()) < 60
    METRICS["generate_2_steps_ms"] = [round(x, 1) for x in latencies]
    a = client.image_array(client.generate("a red cube", steps=2, seed=5).image)
    b = client.image_array(client.generate("a red cube", steps=2, seed=5).image)
    np.testing.assert_array_equal(a, b)  # the seed reproduces the image
    assert wait_until(lambda: len(seen) >= 5, 5.0)
    assert all(m.encoding == "rgb8" and m.header.frame_id == "mobile_o_gen" for _, m in seen)


def test_edit_service_camera_and_inline(client, cameras) -> None:
    msg = images.array_to_image(picture(seed=9)[:, :, ::-1], "bgr8")
    msg.header = header(4242, "front_edit")
    send_frame(cameras[FRONT], msg)
    t0 = time.monotonic()
    resp = client.edit(EditRequest("make it blue", camera=FRONT, steps=2, seed=3))
    METRICS["edit_2_steps_ms"] = round((time.monotonic() - t0) * 1000, 1)
    assert resp.success and resp.status == Status.OK and resp.steps_done == 2, resp.message
    assert same_header(resp.source_header, msg.header)
    assert same_header(resp.image.header, msg.header)  # the result carries the source frame's header
    assert (resp.image.width, resp.image.height, resp.image.encoding) == (512, 512, "rgb8")
    inline = images.rgb_to_image(picture(seed=9), header(5, "inline_edit"))
    resp = client.edit("make it blue", image=inline, steps=2, seed=3)
    assert resp.success and same_header(resp.image.header, inline.header)


# ============================================================================================ bad input
def _bad_image(kind: str) -> Image:
    msg = images.array_to_image(picture(), "rgb8")
    if kind == "encoding":
        msg.encoding = "h264"
    elif kind == "zero":
        msg.width = 0
    elif kind == "length":
        msg.data = msg.data[:-7]
    return msg


BAD = [
    ("empty question", "ask", {"question": "  "}, "empty question"),
    ("long question", "ask", {"question": "word " * 5000}, "prompt too long"),
    (
        "unsupported encoding",
        "ask",
        {"image": _bad_image("encoding")},
        "unsupported inline image encoding 'h264'",
    ),
    ("zero-size image", "ask", {"image": _bad_image("zero")}, "zero-size inline image (0x48)"),
    ("data length", "ask", {"image": _bad_image("length")}, "does not match height*step"),
    ("no frame yet", "ask", {"camera": REAR}, "no frame received yet on camera"),
    ("unknown camera", "ask", {"camera": "/nope/image_raw"}, "unknown camera '/nope/image_raw'"),
    ("bad temperature", "ask", {"temperature": -1.0}, "temperature must be"),
    ("empty prompt", "generate_image", {"prompt": ""}, "empty prompt"),
    ("long prompt", "generate_image", {"prompt": "cube " * 5000}, "prompt too long"),
    ("steps above max", "generate_image", {"steps": MAX_STEPS + 1}, f"exceeds max_steps {MAX_STEPS}"),
    ("guidance nan", "generate_image", {"guidance_scale": math.nan}, "guidance_scale must be finite"),
    ("guidance inf", "generate_image", {"guidance_scale": math.inf}, "guidance_scale must be finite"),
    ("guidance negative", "generate_image", {"guidance_scale": -0.5}, "guidance_scale must be >= 0"),
    ("empty instruction", "edit_image", {"instruction": ""}, "empty instruction"),
    ("edit zero-size", "edit_image", {"image": _bad_image("zero")}, "zero-size inline image"),
    ("edit unknown camera", "edit_image", {"camera": "front"}, "unknown camera 'front'"),
    ("edit steps", "edit_image", {"steps": 1000}, "exceeds max_steps"),
]


@pytest.mark.parametrize(("label", "service", "fields", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_answered_and_the_node_keeps_serving(client, cameras, label, service, fields, expected):
    send_frame(cameras[FRONT], images.array_to_image(picture(), "rgb8"))
    base = {
        "ask": client.ask_request("What is this?", camera=FRONT, max_new_tokens=4),
        "generate_image": client.generate_request("a cube", steps=2),
        "edit_image": client.edit_request("make it red", camera=FRONT, steps=2),
    }[service]
    for key, value in fields.items():
        setattr(base, key, value)
    resp = client.call(service, base, timeout=60)
    assert not resp.success and resp.status == Status.INVALID
    assert expected in resp.message, resp.message
    ok = client.generate("a cube", steps=1)
    assert ok.success, ok.message


def test_bad_input_through_an_action_aborts_with_the_reason(client) -> None:
    call = client.generate_action("a cube", steps=MAX_STEPS + 5)
    result, status = call.result(timeout=30)
    assert status == GoalStatus.STATUS_ABORTED
    assert not result.success and result.status == Status.INVALID and "exceeds max_steps" in result.message


# ============================================================================================ actions
def test_ask_action_streams_tokens(client, cameras) -> None:
    msg = images.array_to_image(picture(seed=11), "rgb8")
    msg.header = header(31, "front_stream")
    send_frame(cameras[FRONT], msg)
    call = client.ask_action("What is in the image?", camera=FRONT, max_new_tokens=8)
    feedback = list(call.feedback(timeout=30))
    result, status = call.result(timeout=30)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.success, result.message
    assert [f.num_tokens for f in feedback] == list(range(1, result.num_tokens + 1))
    texts = [f.text for f in feedback]
    assert all(b.startswith(a) for a, b in itertools.pairwise(texts))  # the text so far grows
    assert result.answer == texts[-1].strip()
    assert same_header(result.image_header, msg.header)


def test_generate_and_edit_actions_report_every_step(client, cameras) -> None:
    call = client.generate_action("a green ball", steps=4, seed=1)
    fb = list(call.feedback(timeout=60))
    result, status = call.result(timeout=60)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.success, result.message
    assert [(f.step, f.total) for f in fb] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert result.image.width == 512 and result.seed == 1
    assert result.status == Status.OK and result.steps_done == 4

    msg = images.array_to_image(picture(seed=2), "rgb8")
    msg.header = header(99, "front_edit_action")
    send_frame(cameras[FRONT], msg)
    call = client.edit_action("add a hat", camera=FRONT, steps=3, seed=2)
    fb = list(call.feedback(timeout=60))
    result, status = call.result(timeout=60)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.success, result.message
    assert [f.step for f in fb] == [1, 2, 3]
    assert same_header(result.source_header, msg.header) and same_header(result.image.header, msg.header)


def test_cancel_stops_a_generation_within_a_step(client, server) -> None:
    """Once the node has the cancel, at most the step in flight completes (the node logs both counts)."""
    call = client.generate_action("a long generation", steps=MAX_STEPS, seed=4)
    feedback = call.feedback(timeout=60)
    while next(feedback).step < 2:
        pass
    t_cancel = time.monotonic()
    assert call.cancel()  # returns when the node accepted the cancel (the job's flag is set by then)
    t_ack = time.monotonic()
    result, status = call.result(timeout=30)
    t_result = time.monotonic()
    for _ in feedback:  # the feedback the result says was sent (it may trail the result)
        pass
    time.sleep(0.3)  # nothing more may arrive
    assert status == GoalStatus.STATUS_CANCELED and str(status) == "CANCELED"
    assert not result.success and result.status == Status.CANCELLED
    steps = [(t, fb.step) for t, fb in call.received]
    last_step = steps[-1][1]
    assert result.steps_done == last_step
    assert result.message == f"cancelled after {last_step}/{MAX_STEPS} steps"
    assert last_step < MAX_STEPS
    assert [s for _, s in steps] == list(range(1, last_step + 1))  # every step reported, then none
    pattern = r"generate_image goal cancelled: requested after (\d+), stopped after (\d+)"
    assert wait_until(lambda: re.search(pattern, server.log()), 5.0), server.log()[-2000:]
    at_cancel, stopped = map(int, re.findall(pattern, server.log())[-1])
    assert stopped == last_step and stopped - at_cancel <= 1  # within one step
    after_ack = [s for t, s in steps if t > t_ack]
    step_s = (steps[-1][0] - steps[0][0]) / max(1, len(steps) - 1)
    METRICS["cancel_generate"] = {
        "steps_done": last_step,
        "of": MAX_STEPS,
        "server_step_at_cancel": at_cancel,
        "feedback_arriving_after_cancel_ack": len(after_ack),
        "cancel_roundtrip_ms": round((t_ack - t_cancel) * 1000, 1),
        "ack_to_result_ms": round((t_result - t_ack) * 1000, 1),
        "step_ms": round(step_s * 1000, 1),
    }
    assert client.generate("after cancel", steps=1, timeout=60).success  # the worker is free again


def test_cancel_stops_an_answer_within_a_token(client, server) -> None:
    call = client.ask_action("Tell me a long story.", image=picture(), max_new_tokens=1500)
    feedback = call.feedback(timeout=60)
    while next(feedback).num_tokens < 3:
        pass
    assert call.cancel()
    result, status = call.result(timeout=30)
    assert status == GoalStatus.STATUS_CANCELED
    # The result and the feedback travel on separate DDS channels: the last token's feedback may arrive after
    # the result (CI saw 7 received, result 8). The iterator waits for the feedback the result says was sent.
    for _ in feedback:
        pass
    tokens = [fb.num_tokens for _, fb in call.received]
    assert result.message == f"cancelled after {tokens[-1]} token(s)" and result.num_tokens == tokens[-1]
    assert result.status == Status.CANCELLED
    # Feedback is cumulative (the text so far) on a KEEP_LAST 100 topic: a client that falls behind a fast
    # model may skip intermediate messages (seen once in a loaded full-suite run: 1, 102, 123, 124, ...),
    # so ask for strictly increasing counts, not every one.
    assert tokens == sorted(set(tokens)) and tokens[-1] < 1500
    pattern = r"ask goal cancelled: requested after (\d+), stopped after (\d+)"
    assert wait_until(lambda: re.search(pattern, server.log()), 5.0)
    at_cancel, stopped = map(int, re.findall(pattern, server.log())[-1])
    assert stopped == tokens[-1] and stopped - at_cancel <= 1  # within one token
    METRICS["cancel_ask"] = {"tokens_done": tokens[-1]}


def test_cancel_of_a_queued_goal_frees_its_slot(client) -> None:
    running = client.ask_action("Tell me a long story.", image=picture(), max_new_tokens=1500)  # seconds
    queued = client.generate_action("second", steps=MAX_STEPS, seed=2)
    next(running.feedback(timeout=30))  # the first one runs, the second waits
    assert queued.cancel()
    result, status = queued.result(timeout=30)
    assert status == GoalStatus.STATUS_CANCELED
    assert result.message == "cancelled: generate cancelled before it started" and not queued.received
    assert result.status == Status.CANCELLED and result.steps_done == 0
    assert not running.done
    assert running.cancel()
    running.result(timeout=30)


# ============================================================================================ defaults
def _set_int(ros: RosSide, name: str, value: int) -> bool:
    value_msg = ParameterValue(type=ParameterType.PARAMETER_INTEGER, integer_value=value)
    req = SetParameters.Request(parameters=[Parameter(name=name, value=value_msg)])
    return ros.call(SetParameters, f"{NS}/mobile_o/set_parameters", req).results[0].successful


def test_defaults_come_from_the_parameter_then_the_manifest(client, ros, tiny_export: Path) -> None:
    """steps 0: the node's default_steps (2 here); with default_steps 0, the model's (its manifest)."""
    manifest_steps = json.loads((tiny_export / "manifest.json").read_text())["defaults"]["steps"]
    assert manifest_steps != PARAMS["default_steps"]
    resp = client.generate("a cube", seed=1, timeout=60)
    assert resp.status == Status.OK and resp.steps_done == PARAMS["default_steps"], resp.message
    assert _set_int(ros, "default_steps", 0)
    try:
        call = client.generate_action("a cube", seed=1)
        totals = {fb.total for fb in call.feedback(timeout=60)}
        result, _ = call.result(timeout=60)
        assert result.status == Status.OK and result.steps_done == manifest_steps, result.message
        assert totals == {manifest_steps}
    finally:
        assert _set_int(ros, "default_steps", PARAMS["default_steps"])


# ============================================================================================ queue
def test_thirty_simultaneous_requests_are_all_answered_once(client, ros) -> None:
    images_seen = ros.collect(
        Image, f"{NS}/generated_image", QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    )
    diag = ros.collect(DiagnosticArray, "/diagnostics")
    time.sleep(0.5)

    def counters() -> dict[str, int]:
        for _, arr in reversed(diag):
            for st in arr.status:
                if st.name == f"mobile_o: {NS}/mobile_o":
                    return {
                        kv.key: int(kv.value) for kv in st.values if kv.key in ("accepted", "rejected_busy")
                    }
        return {}

    assert wait_until(lambda: counters() != {}, 5.0)
    before = counters()
    t0 = time.monotonic()
    futures = [
        client.call_async("generate_image", client.generate_request(f"cube {i}", steps=2, seed=i))
        for i in range(30)
    ]
    assert wait_until(lambda: all(f.done() for f in futures), 120.0, 0.02)
    wall = time.monotonic() - t0
    responses = [f.result() for f in futures]
    ok = [r for r in responses if r.success]
    busy = [r for r in responses if not r.success]
    assert len(responses) == 30
    assert all("busy" in r.message and r.status == Status.BUSY for r in busy), {r.message for r in busy}
    assert all(r.status == Status.OK for r in ok)
    assert len(ok) >= 1 and len(busy) >= 30 - (MAX_QUEUE + 1) - 2
    assert len({r.seed for r in ok}) == len(ok)  # every accepted request ran for itself
    # none lost, none answered twice: one published image per success, and the node's counters agree
    assert wait_until(lambda: len(images_seen) == len(ok), 5.0), (len(images_seen), len(ok))
    time.sleep(0.3)
    assert len(images_seen) == len(ok)
    assert wait_until(lambda: counters().get("accepted", -1) - before["accepted"] == len(ok), 5.0)
    assert counters()["rejected_busy"] - before["rejected_busy"] == len(busy)
    METRICS["queue_30"] = {
        "max_queue": MAX_QUEUE,
        "answered": len(ok),
        "busy": len(busy),
        "wall_s": round(wall, 2),
        "latency_ms_ok": sorted(round(r.latency_ms, 1) for r in ok),
        "median_busy_ms": round(statistics.median(r.latency_ms for r in busy), 2) if busy else None,
    }


# ============================================================================================ diagnostics
def test_diagnostics(ros, cameras, client) -> None:
    send_frame(cameras[FRONT], images.array_to_image(picture(), "rgb8"))
    arrays = ros.collect(DiagnosticArray, "/diagnostics")

    def status():
        for _, arr in reversed(arrays):
            for st in arr.status:
                if st.name == f"mobile_o: {NS}/mobile_o":
                    return st
        return None

    assert wait_until(
        lambda: (
            status() is not None
            and dict((k.key, k.value) for k in status().values).get(f"frame_age_s.{FRONT}", "") != ""
        ),
        5.0,
    )
    values = {kv.key: kv.value for kv in status().values}
    assert values["backend"] == "onnxruntime" and values["model"] == "tiny"
    assert values["state"] == "active" and values["busy_policy"] == "queue"
    assert values["queue_depth"] == "0" and values["max_queue"] == str(MAX_QUEUE)
    assert float(values["last_latency_ms.generate"]) > 0
    assert float(values[f"frame_age_s.{FRONT}"]) < 5.0
    assert values[f"frame_age_s.{REAR}"] == ""  # never received
    assert float(values["rss_mb"]) > 50
    METRICS["rss_mb"] = float(values["rss_mb"])


# ============================================================================================ lifecycle
def _transition(ros: RosSide, tid: int) -> bool:
    return ros.call(
        ChangeState, f"{NS}/mobile_o/change_state", ChangeState.Request(transition=Transition(id=tid))
    ).success


def _state(ros: RosSide) -> str:
    return ros.call(GetState, f"{NS}/mobile_o/get_state", GetState.Request()).current_state.label


def test_lifecycle_deactivate_activate_cleanup_configure(ros, client, cameras, server) -> None:
    pub = cameras[FRONT]
    mark = len(server.log())
    assert _transition(ros, Transition.TRANSITION_DEACTIVATE)
    assert _state(ros) == "inactive"
    assert wait_until(lambda: pub.get_subscription_count() == 0, 10.0)  # deactivate unsubscribes
    for resp in (
        client.ask("anything?", image=picture()),
        client.generate("x", steps=1),
        client.edit("y", image=picture(), steps=1),
    ):
        assert not resp.success and "not active: the node is inactive" in resp.message
        assert resp.status == Status.NOT_ACTIVE
    result, status = client.generate_action("x", steps=1).result(timeout=30)
    assert status == GoalStatus.STATUS_ABORTED and "not active" in result.message
    assert result.status == Status.NOT_ACTIVE

    assert _transition(ros, Transition.TRANSITION_ACTIVATE) and _state(ros) == "active"
    msg = images.array_to_image(picture(), "rgb8")
    msg.header = header(555, "after_activate")
    send_frame(pub, msg)
    resp = client.ask("again?", camera=FRONT)
    assert resp.success and same_header(resp.image_header, msg.header)

    assert _transition(ros, Transition.TRANSITION_DEACTIVATE)
    assert _transition(ros, Transition.TRANSITION_CLEANUP) and _state(ros) == "unconfigured"
    resp = client.generate("x", steps=1)
    assert not resp.success and "not active: the node is unconfigured" in resp.message
    assert resp.status == Status.NOT_ACTIVE
    assert _transition(ros, Transition.TRANSITION_CONFIGURE) and _state(ros) == "inactive"
    assert _transition(ros, Transition.TRANSITION_ACTIVATE) and _state(ros) == "active"
    assert client.generate("back", steps=1).success
    log = server.log()[mark:]
    for line in (
        "Deactivating...",
        "Deactivated",
        "Activating...",
        "Activated",
        "Cleaning up...",
        "Cleaned up",
        "Configuring...",
        "Configured",
    ):
        assert f"[mobile_o] {line}" in log, line


# ============================================================================================ CLI verbs
def _ros_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), **LOOPBACK_ENV)
    return subprocess.run(
        [*serve_command(), "ros", *args, "--namespace", NS],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def test_ros_cli_verbs(tmp_path: Path, client) -> None:
    src = tmp_path / "in.png"
    cv2.imwrite(str(src), picture(seed=1))
    out = tmp_path / "gen.png"
    r = _ros_cli("generate", "a cube", "--out", str(out), "--steps", "2", "--seed", "3", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["seed"] == 3 and info["width"] == 512 and cv2.imread(str(out)).shape == (512, 512, 3)
    r = _ros_cli("ask", "What is this?", "--image", str(src), "--max-new-tokens", "4", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["num_tokens"] >= 1
    r = _ros_cli(
        "edit",
        "make it red",
        "--image",
        str(src),
        "--out",
        str(tmp_path / "e.png"),
        "--steps",
        "2",
        "--progress",
    )
    assert r.returncode == 0, r.stderr
    # Feedback and result travel on different channels: the last step's feedback may land after the
    # result (seen once in a fresh-clone run), so any step's progress line shows the feedback path works.
    assert "step " in r.stderr and "/2" in r.stderr and "wrote" in r.stdout
    r = _ros_cli("ask", "   ", "--image", str(src))
    assert r.returncode == 1 and "mobile-o: error: empty question" in r.stderr


# ============================================================================================ shutdown
def test_zz_sigterm_shuts_down_cleanly(server: ServerProcess, ros, client) -> None:
    """Last test of the module: SIGTERM → jobs cancelled, model freed, exit code 0."""
    call = client.generate_action("interrupted", steps=MAX_STEPS)
    next(iter(call.feedback(timeout=30)))
    rc = server.stop()
    assert rc == 0, server.log()[-3000:]
    assert "Exiting: cancelling jobs and freeing the model" in server.log()
