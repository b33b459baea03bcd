"""The client's goal sending over real DDS when a goal request or its response is lost.

A plain rclpy ActionServer for ``GenerateImage`` runs in this process on its own domain. A lost request is
made real by sending before the server exists (a volatile request reaches no late reader); a lost response
by having another client send the same goal id first, so the server holds the goal and refuses the id.
"""

from __future__ import annotations

import concurrent.futures
import re
import threading
import time
import uuid

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(120)]

rclpy = pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.action", reason="generated interfaces missing (make setup)")

from action_msgs.msg import GoalStatus  # noqa: E402
from mobile_o_ros.action import GenerateImage  # noqa: E402
from rclpy.action import ActionClient, ActionServer  # noqa: E402
from rclpy.callback_groups import ReentrantCallbackGroup  # noqa: E402
from ros_support import RosSide, domain_id, wait_until  # noqa: E402
from unique_identifier_msgs.msg import UUID  # noqa: E402

from mobile_o_ros.ros.client import ActionCall, ClientError, MobileOClient  # noqa: E402
from mobile_o_ros.ros.client import GoalStatus as ClientGoalStatus  # noqa: E402

MODULE_INDEX = 4
NS = f"/mo_goals_{uuid.uuid4().hex[:6]}"
STEPS = 3


class StepServer:
    """A GenerateImage server: ``steps`` feedback messages 0.05 s apart, then success; counts executions."""

    def __init__(self, node) -> None:
        self.executed: list[bytes] = []
        self.release = threading.Event()
        self.release.set()
        self.server = ActionServer(
            node,
            GenerateImage,
            f"{NS}/generate_image",
            execute_callback=self._execute,
            callback_group=ReentrantCallbackGroup(),
        )

    def _execute(self, goal_handle):
        self.executed.append(bytes(goal_handle.goal_id.uuid))
        self.release.wait(30)
        for step in range(1, goal_handle.request.steps + 1):
            goal_handle.publish_feedback(GenerateImage.Feedback(step=step, total=goal_handle.request.steps))
            time.sleep(0.05)
        goal_handle.succeed()
        return GenerateImage.Result(success=True, message=f"{goal_handle.request.prompt} done")


@pytest.fixture()
def ros():
    with RosSide(domain_id(MODULE_INDEX), name="mobile_o_goals") as side:
        yield side


@pytest.fixture()
def client(ros: RosSide):
    c = MobileOClient(NS, context=ros.context, wait_timeout=20.0)
    yield c
    c.close()


def test_a_lost_goal_request_is_sent_again(ros: RosSide, client: MobileOClient, monkeypatch) -> None:
    monkeypatch.setattr(ActionCall, "GOAL_RESEND_S", 1.0)
    action = client._actions["generate_image"]
    goal = GenerateImage.Goal(prompt="late server", steps=STEPS)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            ActionCall,
            action,
            GenerateImage,
            goal,
            client.name("generate_image"),
            20.0,
            client._routes,
            client._statuses,
        )
        # The call registers its goal id just before the first send: the server appears 0.3 s after that.
        assert wait_until(lambda: len(client._routes) > 0, 10.0, period=0.001)
        time.sleep(0.3)
        server = StepServer(ros.node)
        call = pending.result(timeout=20)
    result, status = call.result(timeout=20)
    assert call.resends >= 1 and not call.adopted
    assert status == GoalStatus.STATUS_SUCCEEDED and result.message == "late server done"
    assert server.executed == [bytes(call.goal_handle.goal_id.uuid)]  # executed once
    assert [fb.step for fb in call.feedback(timeout=5)] == list(range(1, STEPS + 1))


def test_a_goal_whose_response_was_lost_is_adopted(ros: RosSide, client: MobileOClient) -> None:
    server = StepServer(ros.node)
    server.release.clear()  # the goal waits until the adopting call listens
    goal_id = uuid.uuid4().bytes
    goal = GenerateImage.Goal(prompt="adopted", steps=STEPS)
    first = ActionClient(ros.node, GenerateImage, f"{NS}/generate_image")
    assert first.wait_for_server(timeout_sec=20)
    sent = first.send_goal_async(goal, goal_uuid=UUID(uuid=list(goal_id)))
    assert wait_until(sent.done, 20) and sent.result().accepted  # the response the adopting call never saw
    call = ActionCall(
        client._actions["generate_image"],
        GenerateImage,
        goal,
        client.name("generate_image"),
        20.0,
        client._routes,
        client._statuses,
        goal_id=goal_id,
    )
    assert call.adopted and call.resends == 0
    server.release.set()
    result, status = call.result(timeout=20)
    assert status == GoalStatus.STATUS_SUCCEEDED and result.message == "adopted done"
    assert server.executed == [goal_id]
    assert [fb.step for fb in call.feedback(timeout=5)] == list(range(1, STEPS + 1))


def test_a_goal_with_no_server_times_out_with_a_clear_error(client: MobileOClient, monkeypatch) -> None:
    monkeypatch.setattr(ActionCall, "GOAL_RESEND_S", 0.5)
    goal = GenerateImage.Goal(prompt="nobody", steps=1)
    action = client._actions["generate_image"]
    name = client.name("generate_image")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pending = pool.submit(
            ActionCall, action, GenerateImage, goal, name, 2.0, client._routes, client._statuses
        )
        err = pending.exception(timeout=60)  # a generous deadline for a 2 s timeout
    assert isinstance(err, ClientError)
    assert re.fullmatch(r"timed out after 2\.0 s waiting for .*image goal response", str(err)), err


def test_the_result_status_prints_by_name(ros: RosSide, client: MobileOClient) -> None:
    StepServer(ros.node)
    call = client.generate_action("named", steps=STEPS)
    steps = [fb.step for fb in call]  # iterating the call is call.feedback()
    result, status = call.result(timeout=20)
    assert steps == list(range(1, STEPS + 1)) and result.message == "named done"
    assert status == GoalStatus.STATUS_SUCCEEDED and status is ClientGoalStatus.SUCCEEDED
    assert (str(status), repr(status), f"{status}") == ("SUCCEEDED", "SUCCEEDED", "SUCCEEDED")
    assert ClientGoalStatus.STATUS_CANCELED is ClientGoalStatus.CANCELED == GoalStatus.STATUS_CANCELED == 5
