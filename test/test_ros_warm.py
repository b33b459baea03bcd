"""Warm frames over real DDS: ``mobile-o serve`` on the tiny export with two cameras and ``warm_rate_hz`` 10.

A question about a warm camera frame answers exactly as a cold one (an inline copy of the same pixels, and
the same frame with warming off) and says so in ``warm_frame``; every answer reports
``time_to_first_token_ms`` (service and action); ``/diagnostics`` shows each camera's warm state and the warm
frame's age; ``warm_rate_hz`` 0 turns warming off at run time; the continuous question starts from the warm
frame and answers as a cold question does.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(300)]

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")

from action_msgs.msg import GoalStatus  # noqa: E402
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from mobile_o_ros.msg import SceneAnswer  # noqa: E402
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue  # noqa: E402
from rcl_interfaces.srv import SetParameters  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from ros_support import (  # noqa: E402
    LOOPBACK_ENV,
    RosSide,
    ServerProcess,
    domain_id,
    running_server,
    serve_command,
    wait_until,
)
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from mobile_o_ros.ros import images  # noqa: E402
from mobile_o_ros.ros.client import Status  # noqa: E402

MODULE_INDEX = 7
DOMAIN = domain_id(MODULE_INDEX)
NS = f"/mo_warm_{os.getpid()}"
FRONT = f"{NS}_cam/front/image_raw"
REAR = f"{NS}_cam/rear/image_raw"
RATE_HZ = 10.0
QUESTION = "What is in the image?"
PARAMS = {
    "camera_topics": [FRONT, REAR],
    "warm_rate_hz": RATE_HZ,
    "max_new_tokens": 6,
    "diagnostics_period_s": 0.25,
}


@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    with running_server(tiny_export, NS, DOMAIN, PARAMS, tmp_path_factory.mktemp("ros_server_warm")) as srv:
        yield srv


@pytest.fixture(scope="module")
def ros(server: ServerProcess):
    with RosSide(DOMAIN, "mobile_o_warm") as side:
        yield side


@pytest.fixture(scope="module")
def client(ros: RosSide):
    with ros.client(NS) as c:
        yield c


@pytest.fixture(scope="module")
def front(ros: RosSide):
    pub = ros.node.create_publisher(Image, FRONT, 10)
    assert wait_until(lambda: pub.get_subscription_count() > 0, 15.0), "camera subscription not matched"
    return pub


@pytest.fixture(scope="module")
def diagnostics(ros: RosSide):
    arrays = ros.collect(DiagnosticArray, "/diagnostics")

    def latest() -> dict[str, str]:
        for _, arr in reversed(arrays):
            for st in arr.status:
                if st.name == f"mobile_o: {NS}/mobile_o":
                    return {kv.key: kv.value for kv in st.values}
        return {}

    return latest


def picture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((48, 64, 3), np.uint8)
    img[:24] = rng.integers(0, 256, 3)
    img[24:] = rng.integers(0, 256, 3)
    return img


def publish(pub, rgb: np.ndarray, sec: int, diagnostics) -> Image:
    """Publish one frame and wait until the node has received it (its frames_received count moved)."""
    seen = int(diagnostics().get(f"frames_received.{FRONT}", "0") or 0)
    msg = images.rgb_to_image(rgb, Header(frame_id=f"front_{sec}"))
    msg.header.stamp.sec = sec
    pub.publish(msg)
    assert wait_until(lambda: int(diagnostics().get(f"frames_received.{FRONT}", "0") or 0) > seen, 15.0), (
        diagnostics()
    )
    return msg


def set_parameter(ros: RosSide, name: str, value: float | str) -> None:
    if isinstance(value, str):
        typed = ParameterValue(type=ParameterType.PARAMETER_STRING, string_value=value)
    else:
        typed = ParameterValue(type=ParameterType.PARAMETER_DOUBLE, double_value=float(value))
    req = SetParameters.Request(parameters=[Parameter(name=name, value=typed)])
    assert ros.call(SetParameters, f"{NS}/mobile_o/set_parameters", req).results[0].successful


def set_rate(ros: RosSide, hz: float) -> None:
    set_parameter(ros, "warm_rate_hz", hz)


def test_a_warm_frame_answers_as_a_cold_one(client, front, diagnostics) -> None:
    rgb = picture(1)
    msg = publish(front, rgb, 101, diagnostics)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    warm = client.ask(QUESTION, camera=FRONT)
    assert warm.success and warm.status == Status.OK, warm.message
    assert warm.warm_frame and warm.image_header.stamp.sec == msg.header.stamp.sec
    assert 0 < warm.time_to_first_token_ms <= warm.latency_ms
    cold = client.ask(QUESTION, image=rgb)  # an inline image is never warm
    assert cold.success and not cold.warm_frame and 0 < cold.time_to_first_token_ms <= cold.latency_ms
    assert (warm.answer, warm.num_tokens) == (cold.answer, cold.num_tokens)
    assert wait_until(lambda: int(diagnostics().get("warm_hits", "0")) >= 1, 5.0), diagnostics()


def test_the_action_result_reports_the_first_token_and_the_warm_frame(client, front, diagnostics) -> None:
    publish(front, picture(2), 102, diagnostics)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    call = client.ask_action(QUESTION, camera=FRONT)
    feedback = list(call.feedback(timeout=30))
    result, status = call.result(timeout=30)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.success, result.message
    assert result.warm_frame and 0 < result.time_to_first_token_ms <= result.latency_ms
    assert [f.num_tokens for f in feedback] == list(range(1, result.num_tokens + 1))
    inline = client.ask_action(QUESTION, image=picture(2))
    inline_result, _ = inline.result(timeout=30)
    assert not inline_result.warm_frame and inline_result.answer == result.answer


def test_diagnostics_show_each_cameras_warm_state(front, diagnostics) -> None:
    publish(front, picture(3), 103, diagnostics)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    values = diagnostics()
    assert values["warm_rate_hz"] == f"{RATE_HZ:g}" and int(values["warm_encoded"]) >= 1
    assert 0 <= float(values[f"warm_frame_age_s.{FRONT}"]) < 30.0
    assert values[f"warm.{REAR}"] == "none" and values[f"warm_frame_age_s.{REAR}"] == ""  # no frame yet
    assert {"warm_hits", "warm_preempted"} <= set(values)


def test_warm_rate_zero_turns_warming_off(client, ros, front, diagnostics) -> None:
    rgb = picture(4)
    publish(front, rgb, 104, diagnostics)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    warm = client.ask(QUESTION, camera=FRONT)
    set_rate(ros, 0.0)
    try:
        assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "off", 10.0), diagnostics()
        assert diagnostics()["warm_rate_hz"] == "0"
        encoded = diagnostics()["warm_encoded"]
        publish(front, rgb, 105, diagnostics)  # a new frame: nothing warms it
        time.sleep(3 / RATE_HZ)
        cold = client.ask(QUESTION, camera=FRONT)
        assert cold.success and not cold.warm_frame and cold.image_header.stamp.sec == 105
        assert (cold.answer, cold.num_tokens) == (warm.answer, warm.num_tokens) and warm.warm_frame
        assert wait_until(lambda: diagnostics()["warm_encoded"] == encoded, 5.0)
    finally:
        set_rate(ros, RATE_HZ)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    assert client.ask(QUESTION, camera=FRONT).warm_frame


def test_ros_ask_json_reports_both(front, diagnostics) -> None:
    publish(front, picture(6), 106, diagnostics)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    env = dict(os.environ, ROS_DOMAIN_ID=str(DOMAIN), **LOOPBACK_ENV)
    r = subprocess.run(
        [*serve_command(), "ros", "ask", QUESTION, "--camera", FRONT, "--json", "--namespace", NS],
        capture_output=True,
        text=True,
        env=env,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["warm_frame"] is True and 0 < info["time_to_first_token_ms"] <= info["latency_ms"]


def test_the_continuous_question_starts_from_the_warm_frame(client, ros, front, diagnostics) -> None:
    rgb = picture(7)
    publish(front, rgb, 107, diagnostics)
    assert wait_until(lambda: diagnostics().get(f"warm.{FRONT}") == "warm", 30.0), diagnostics()
    cold = client.ask(QUESTION, image=rgb)
    hits = int(diagnostics()["warm_hits"])
    answers = ros.collect(
        SceneAnswer, f"{NS}/answer", QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    )
    set_parameter(ros, "continuous_question", QUESTION)
    try:
        assert wait_until(lambda: len(answers) >= 2, 30.0), diagnostics()
    finally:
        set_parameter(ros, "continuous_question", "")
    assert all(m.answer == cold.answer and m.header.stamp.sec == 107 for _, m in answers[:2]), answers
    assert wait_until(lambda: int(diagnostics()["warm_hits"]) >= hits + 2, 5.0), diagnostics()
