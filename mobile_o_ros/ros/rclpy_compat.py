"""Workarounds for rclpy behaviours that the node and the client must live with, one per section.

Each function or class says which rclpy behaviour it works around. Nothing else in :mod:`mobile_o_ros.ros`
reaches into rclpy internals. rclpy itself is imported by the functions that need it, so this module
imports without a ROS installation.

* Feedback after the result: :data:`FEEDBACK_FLUSH_S`, :func:`let_feedback_arrive` (node),
  :func:`subscribe_feedback`, :func:`wait_for_feedback_publisher`, :class:`FeedbackStream` (client).
* A goal response that never comes: :class:`GoalStatuses`, :func:`send_goal` (resend, then adopt).
* Done callbacks that run late: :func:`wait_done`.
* A cancel that is not yet CANCELING: :func:`wait_until_canceling`.
* Differences between ROS 2 releases: :func:`subscription_event_callbacks`, :func:`has_post_set_callback`.
"""

from __future__ import annotations

import collections
import math
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "FEEDBACK_FLUSH_S",
    "FeedbackStream",
    "GoalSendError",
    "GoalStatuses",
    "SentGoal",
    "has_post_set_callback",
    "let_feedback_arrive",
    "send_goal",
    "subscribe_feedback",
    "subscription_event_callbacks",
    "wait_done",
    "wait_for_feedback_publisher",
    "wait_until_canceling",
]

# ============================================================================ feedback after the result
#: Pause between a goal's last feedback and its result (node side).
FEEDBACK_FLUSH_S = 0.05


def let_feedback_arrive(last_feedback: float) -> None:
    """Sleep until :data:`FEEDBACK_FLUSH_S` after the last feedback was published (no-op when long past).

    Works around: feedback travels on a topic and the result on a service, so the result can overtake the
    last feedback, and rclpy's ``ActionClient`` forgets a goal's feedback callback as soon as its result
    arrives (``_remove_pending_result_request``): feedback that lands later is dropped. ``last_feedback`` is a
    ``time.monotonic()`` value, 0 when no feedback was sent.
    """
    delay = last_feedback + FEEDBACK_FLUSH_S - time.monotonic()
    if last_feedback and delay > 0:
        time.sleep(delay)


def subscribe_feedback(
    node: Any, action_type: Any, action_name: str, callback: Callable[[bytes, Any], None], group: Any
) -> Any:
    """Subscribe to an action's feedback topic; ``callback(goal_id, feedback)`` for every message.

    Works around the same dropped late feedback on the client side: reading the topic that rclpy's
    ``ActionClient`` reads (``<action>/_action/feedback``, reliable, depth 100 as the node publishes it)
    keeps every message, whenever it arrives.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    return node.create_subscription(
        action_type.Impl.FeedbackMessage,
        f"{action_name}/_action/feedback",
        lambda msg: callback(bytes(msg.goal_id.uuid), msg.feedback),
        qos,
        callback_group=group,
    )


def wait_for_feedback_publisher(node: Any, subscription: Any, timeout: float) -> bool:
    """Wait (at most ``timeout`` s) until ``subscription`` is matched to a publisher; True when it is.

    Works around: the server's goal services can be discovered before the feedback subscription is matched
    to its publisher, and feedback sent before that is lost (a fresh process once got none of a short
    edit's). ``Subscription.get_publisher_count`` (matched publishers) exists from rclpy 7 (Jazzy, Kilted);
    Humble's rclpy only has the graph's count of the topic's publishers, which discovery fills in at about
    the same time.
    """
    count = getattr(subscription, "get_publisher_count", None) or (
        lambda: node.count_publishers(subscription.topic_name)
    )
    deadline = time.monotonic() + timeout
    while count() == 0:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


_DONE = object()


class FeedbackStream:
    """The feedback of one goal, in arrival order, and an iterator that waits for late feedback.

    Fed by :func:`subscribe_feedback`; :meth:`finish` is called when the result arrived. Since the last
    feedback can arrive after the result, the iterator then waits (at most :attr:`LATE_S`) until the
    feedback reaches the progress the result reports.
    """

    LATE_S = 1.0

    def __init__(self) -> None:
        self._queue: queue.Queue[Any] = queue.Queue()
        #: (time.monotonic() at arrival, feedback) for every feedback message, in arrival order.
        self.received: list[tuple[float, Any]] = []

    def put(self, feedback: Any) -> None:
        """One feedback message (from the subscription's callback)."""
        self.received.append((time.monotonic(), feedback))
        self._queue.put(feedback)

    def finish(self) -> None:
        """The result arrived: the iterator stops once the feedback caught up with it."""
        self._queue.put(_DONE)

    def iterate(
        self,
        timeout: float | None,
        caught_up: Callable[[Any], bool],
        on_silence: Callable[[], Exception],
    ) -> Iterator[Any]:
        """Yield feedback until the goal finished and ``caught_up(last feedback or None)`` is true.

        ``timeout``: the longest wait between two messages before the goal finished; then the exception
        that ``on_silence()`` returns is raised.
        """
        last = None
        deadline = None
        while True:
            wait = timeout if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=wait)
            except queue.Empty as err:
                if deadline is not None:
                    return  # the late feedback never came
                raise on_silence() from err
            if item is _DONE:
                deadline = time.monotonic() + self.LATE_S
            else:
                last = item
                yield item
            if deadline is not None and caught_up(last):
                return


# ============================================================================ done callbacks that run late
def wait_done(futures: list[Any], until: float) -> Any:
    """The first of ``futures`` to complete, or None at ``time.monotonic()`` = ``until``.

    Works around: rclpy runs a future's done callbacks as tasks of the executor, so an executor that is
    slow to run them would stretch a wait that relies on them alone; ``done()`` is polled as well.
    """
    event = threading.Event()
    for future in futures:
        future.add_done_callback(lambda _f: event.set())
    while True:
        for future in futures:
            if future.done():
                return future
        left = until - time.monotonic()
        if left <= 0:
            return None
        event.wait(min(left, 0.05))


# ============================================================================ lost goal responses
class GoalSendError(RuntimeError):
    """A goal was rejected, its request failed, or no response came in time."""


class GoalStatuses:
    """Goal ids each action server lists on its status topic (the most recent :attr:`KEEP` per action).

    Fed by a subscription to ``<action>/_action/status``; :func:`send_goal` asks it whether a goal whose
    response was lost is held by the server.
    """

    KEEP = 1024

    def __init__(self) -> None:
        self._seen: dict[str, collections.OrderedDict[bytes, int]] = {}
        self._changed = threading.Condition()

    def on_status(self, action: str, msg: Any) -> None:
        """Record one GoalStatusArray of ``action`` (the full action name)."""
        with self._changed:
            seen = self._seen.setdefault(action, collections.OrderedDict())
            for status in msg.status_list:
                goal_id = bytes(status.goal_info.goal_id.uuid)
                seen[goal_id] = int(status.status)
                seen.move_to_end(goal_id)
            while len(seen) > self.KEEP:
                seen.popitem(last=False)
            self._changed.notify_all()

    def wait_for(self, action: str, goal_id: bytes, timeout: float) -> bool:
        """True once ``goal_id`` was listed by ``action``'s server (waiting at most ``timeout`` seconds)."""
        with self._changed:
            return self._changed.wait_for(lambda: goal_id in self._seen.get(action, {}), timeout)


class SentGoal:
    """What :func:`send_goal` returns: the accepted goal handle and how it was obtained."""

    def __init__(self, handle: Any, resends: int, adopted: bool) -> None:
        self.handle = handle
        #: Goal requests sent again because no response came in time.
        self.resends = resends
        #: True when the response was lost and the goal was found in the server's status list.
        self.adopted = adopted


def _adopted_handle(action_client: Any, action_type: Any, uuid_msg: Any) -> Any:
    """A handle for a goal the server accepted but whose response was lost (result and cancel work).

    rclpy builds ``ClientGoalHandle`` objects only from a goal response; this builds one from an accepting
    response made here.
    """
    from rclpy.action.client import ClientGoalHandle

    response = action_type.Impl.SendGoalService.Response(accepted=True)
    return ClientGoalHandle(action_client, uuid_msg, response)


def send_goal(
    action_client: Any,
    action_type: Any,
    action_name: str,
    goal: Any,
    timeout: float | None,
    statuses: GoalStatuses | None,
    resend_s: float,
    goal_id: bytes | None = None,
) -> SentGoal:
    """Send ``goal``; send it again (same goal id) every ``resend_s`` s while no response comes.

    Works around: a goal request and its response are reliable DDS messages, yet a response has been
    seen never to arrive (a 30 s wait in CI), and rclpy's ``send_goal_async`` then waits forever. The server
    refuses a goal id it already holds, so a rejection is checked against the action's status list: a goal
    listed there is ours (the response to an earlier send was lost) and is adopted. Raises
    :class:`GoalSendError` on a real rejection, a failed request, or no response within ``timeout``.
    """
    from unique_identifier_msgs.msg import UUID

    uuid_msg = UUID(uuid=list(goal_id or uuid.uuid4().bytes))
    key = bytes(uuid_msg.uuid)
    until = time.monotonic() + (math.inf if timeout is None else timeout)
    sent = [action_client.send_goal_async(goal, goal_uuid=uuid_msg)]
    resends = 0
    while True:
        done = wait_done(sent, min(until, time.monotonic() + resend_s))
        if done is not None and done.exception() is not None:
            raise GoalSendError(f"{action_name} goal request failed: {done.exception()}")
        handle = None if done is None else done.result()
        if handle is not None and handle.accepted:
            return SentGoal(handle, resends, adopted=False)
        if statuses is not None and statuses.wait_for(action_name, key, 1.0 if handle else 0.0):
            return SentGoal(_adopted_handle(action_client, action_type, uuid_msg), resends, adopted=True)
        if handle is not None:
            raise GoalSendError(f"{action_name} goal rejected")
        if time.monotonic() >= until:
            raise GoalSendError(f"timed out after {timeout} s waiting for {action_name} goal response")
        resends += 1
        sent.append(action_client.send_goal_async(goal, goal_uuid=uuid_msg))


# ============================================================================ a cancel not yet CANCELING
def wait_until_canceling(goal_handle: Any, timeout: float = 10.0) -> bool:
    """Wait until a server goal handle is CANCELING (at most ``timeout`` s); True when it is.

    Works around: rclpy's ``ActionServer`` moves a goal to CANCELING only after the cancel callback returned,
    on another executor thread, while ``canceled()`` is legal only from CANCELING. A job can stop before
    that; on a starved CPU the move can take seconds, and giving up sooner aborts the goal, which rclpy then
    leaves out of the cancel response (the client is told the cancel failed).
    """
    deadline = time.monotonic() + timeout
    while not goal_handle.is_cancel_requested:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)
    return True


# ============================================================================ ROS 2 release differences
def has_post_set_callback(node: Any) -> bool:
    """True when the node offers ``add_post_set_parameters_callback`` (Iron and later; not Humble, where the
    values are applied in the validating callback once they passed)."""
    return hasattr(node, "add_post_set_parameters_callback")


def subscription_event_callbacks(**callbacks: Any) -> Any:
    """rclpy's ``SubscriptionEventCallbacks(**callbacks)``: in ``rclpy.event_handler`` from Iron on, in
    ``rclpy.qos_event`` on Humble."""
    try:
        from rclpy.event_handler import SubscriptionEventCallbacks
    except ImportError:
        from rclpy.qos_event import SubscriptionEventCallbacks  # type: ignore[no-redef]
    return SubscriptionEventCallbacks(**callbacks)
