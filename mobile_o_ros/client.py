"""A Python client for the Mobile-O ROS 2 node: services (blocking calls) and actions (feedback + cancel).

.. code-block:: python

    from mobile_o_ros.client import MobileOClient

    with MobileOClient("/mobile_o") as mo:
        print(mo.ask("What is in front of the robot?").answer)      # latest frame of the first camera
        rgb = mo.image_array(mo.generate("a red cube on a table", steps=20).image)
        call = mo.generate_action("a red cube", steps=20)
        for fb in call:                                               # feedback: steps done, total
            print(fb.step, "/", fb.total)
            if fb.step == 5:
                call.cancel()
        result, status = call.result()
        print(status, result.message)  # CANCELED cancelled after 6/20 steps (the step in flight finishes)

The client owns a small node spun by a MultiThreadedExecutor in a background thread (llama_ros style), so
every method can be called from plain Python code. ``rclpy.init()`` is called when needed (and
``rclpy.shutdown()`` on :meth:`MobileOClient.close` in that case). A client that is never closed is closed
at interpreter exit, before Python tears down the threads still inside rcl.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import enum
import functools
import math
import queue
import re
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import numpy as np

from mobile_o_ros.ros import images

DEFAULT_NAMESPACE = "/mobile_o"
_DONE = object()


class ClientError(RuntimeError):
    """The server is unreachable, a goal was rejected, or a wait timed out."""


class GoalStatus(enum.IntEnum):
    """An action goal's final status: the ``action_msgs/GoalStatus`` values, printed by name.

    Equal to the integers of ``action_msgs.msg.GoalStatus`` (``GoalStatus.CANCELED == 5``), and
    ``GoalStatus.STATUS_CANCELED`` is the same member as ``GoalStatus.CANCELED``.
    """

    UNKNOWN = 0
    ACCEPTED = 1
    EXECUTING = 2
    CANCELING = 3
    SUCCEEDED = 4
    CANCELED = 5
    ABORTED = 6
    STATUS_UNKNOWN = 0
    STATUS_ACCEPTED = 1
    STATUS_EXECUTING = 2
    STATUS_CANCELING = 3
    STATUS_SUCCEEDED = 4
    STATUS_CANCELED = 5
    STATUS_ABORTED = 6

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


def _wait_done(futures: list[Any], until: float) -> Any:
    """The first of ``futures`` to complete, or None at ``time.monotonic()`` = ``until``.

    Polls ``done()`` as well as waiting on a done callback: rclpy runs a future's done callbacks as tasks of
    the executor, so an executor that is slow to run them must not stretch the wait.
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


def _wait(future: Any, timeout: float | None, what: str) -> Any:
    """Block until an rclpy future completes (it is completed by the client's executor thread)."""
    until = time.monotonic() + (math.inf if timeout is None else timeout)
    if _wait_done([future], until) is None:
        raise ClientError(f"timed out after {timeout} s waiting for {what}")
    if future.exception() is not None:
        raise ClientError(f"{what} failed: {future.exception()}")
    return future.result()


def _image_msg(image: Any) -> Any:
    """None → an empty Image (use the camera); an HxWx3 uint8 RGB array → rgb8; an Image is kept."""
    from sensor_msgs.msg import Image

    if image is None:
        return Image()
    if isinstance(image, np.ndarray):
        return images.rgb_to_image(image)
    return image


def _progress(feedback: Any) -> int:
    """Tokens (ask) or steps (generate/edit) reported by one feedback message."""
    return int(feedback.num_tokens if hasattr(feedback, "num_tokens") else feedback.step)


def _expected_progress(result: Any, last: Any) -> int | None:
    """How far the feedback must go for this result (None: unknown)."""
    if hasattr(result, "num_tokens"):
        return int(result.num_tokens)
    m = re.match(r"cancelled after (\d+)/", result.message)
    if m:
        return int(m.group(1))
    if result.success:
        return None if last is None else int(last.total)
    return 0


def _adopted_handle(action_client: Any, uuid_msg: Any) -> Any:
    """A handle for a goal the server accepted but whose response was lost (result and cancel work)."""
    from rclpy.action.client import ClientGoalHandle

    response = action_client._action_type.Impl.SendGoalService.Response(accepted=True)
    return ClientGoalHandle(action_client, uuid_msg, response)


class GoalStatuses:
    """Goal ids each action server lists on its status topic (the most recent :attr:`KEEP` per action)."""

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


class ActionCall:
    """One action goal in flight: iterate for feedback, :meth:`cancel`, :meth:`result`.

    Feedback comes from the action's feedback topic, routed by goal id: rclpy's ActionClient drops feedback
    that arrives after the result (a separate DDS channel), so after the result the iterator waits briefly
    (at most :attr:`LATE_FEEDBACK_S`) for the feedback the result says was sent.
    """

    LATE_FEEDBACK_S = 1.0
    #: Seconds without a goal response before the request is sent again (same goal id). Both the request and
    #: the response are reliable DDS messages, yet CI once waited 30 s for a response that never came.
    GOAL_RESEND_S = 5.0

    def __init__(
        self,
        action_client: Any,
        goal: Any,
        name: str,
        timeout: float | None,
        routes: dict[bytes, ActionCall],
        statuses: GoalStatuses | None = None,
        goal_id: bytes | None = None,
    ) -> None:
        self._name = name
        self._feedback: queue.Queue[Any] = queue.Queue()
        self._result_future: Any = None
        self._result: tuple[Any, GoalStatus] | None = None
        #: (time.monotonic() at arrival, feedback) for every feedback message, in arrival order.
        self.received: list[tuple[float, Any]] = []
        #: Goal requests sent again because no response came within :attr:`GOAL_RESEND_S`.
        self.resends = 0
        #: True when the goal response was lost and the goal was found in the server's status list.
        self.adopted = False
        goal_id = goal_id or uuid.uuid4().bytes
        routes[goal_id] = self
        self.goal_handle = self._send(action_client, goal, goal_id, timeout, statuses)
        self._result_future = self.goal_handle.get_result_async()
        self._result_future.add_done_callback(lambda _f: self._feedback.put(_DONE))

    def _send(
        self,
        action_client: Any,
        goal: Any,
        goal_id: bytes,
        timeout: float | None,
        statuses: GoalStatuses | None,
    ) -> Any:
        """Send the goal; resend it (same id) while no response comes; return the accepted goal handle.

        The server refuses a goal id it already holds, so a rejection is checked against the action's status
        list: a goal listed there is ours (the response to an earlier send was lost) and is adopted.
        """
        from unique_identifier_msgs.msg import UUID

        uuid_msg = UUID(uuid=list(goal_id))
        until = time.monotonic() + (math.inf if timeout is None else timeout)
        sent = [action_client.send_goal_async(goal, goal_uuid=uuid_msg)]
        while True:
            done = _wait_done(sent, min(until, time.monotonic() + self.GOAL_RESEND_S))
            if done is not None and done.exception() is not None:
                raise ClientError(f"{self._name} goal request failed: {done.exception()}")
            handle = None if done is None else done.result()
            if handle is not None and handle.accepted:
                return handle
            listed = statuses is not None and statuses.wait_for(self._name, goal_id, 1.0 if handle else 0.0)
            if listed:
                self.adopted = True
                return _adopted_handle(action_client, uuid_msg)
            if handle is not None:
                raise ClientError(f"{self._name} goal rejected")
            if time.monotonic() >= until:
                raise ClientError(f"timed out after {timeout} s waiting for {self._name} goal response")
            self.resends += 1
            sent.append(action_client.send_goal_async(goal, goal_uuid=uuid_msg))

    def _on_feedback(self, feedback: Any) -> None:
        self.received.append((time.monotonic(), feedback))
        self._feedback.put(feedback)

    def __iter__(self) -> Iterator[Any]:
        """``for fb in call`` is ``call.feedback()``: feedback until the goal finishes, no timeout."""
        return self.feedback()

    def feedback(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield feedback messages until the goal finishes (``timeout``: max seconds between messages)."""
        last = None
        deadline = None
        while True:
            wait = timeout if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._feedback.get(timeout=wait)
            except queue.Empty as err:
                if deadline is not None:
                    return  # late feedback never came
                raise ClientError(f"no {self._name} feedback for {timeout} s") from err
            if item is _DONE:
                deadline = time.monotonic() + self.LATE_FEEDBACK_S
            else:
                last = item
                yield item
            if deadline is not None:
                expected = _expected_progress(self.result()[0], last)
                if expected is not None and (0 if last is None else _progress(last)) >= expected:
                    return

    def cancel(self, timeout: float | None = 10.0) -> bool:
        """Request cancellation; True when the server accepted it (the result then says cancelled)."""
        response = _wait(self.goal_handle.cancel_goal_async(), timeout, f"{self._name} cancel")
        return len(response.goals_canceling) > 0

    def result(self, timeout: float | None = None) -> tuple[Any, GoalStatus]:
        """(result message, :class:`GoalStatus`) once the goal is finished."""
        if self._result is None:
            wrapped = _wait(self._result_future, timeout, f"{self._name} result")
            self._result = (wrapped.result, GoalStatus(int(wrapped.status)))
        return self._result

    @property
    def done(self) -> bool:
        """True once the result arrived."""
        return self._result_future is not None and self._result_future.done()


#: Clients not closed yet; :func:`_close_live_clients` closes them at interpreter exit.
_LIVE_CLIENTS: weakref.WeakSet[MobileOClient] = weakref.WeakSet()
_EXIT_HOOK = threading.Lock()
_exit_hook_registered = False


def _close_live_clients() -> None:
    """Close every client still open (an atexit hook: a spin thread left inside rcl aborts the exit)."""
    for client in list(_LIVE_CLIENTS):
        with contextlib.suppress(Exception):
            client.close()


def _track(client: MobileOClient) -> None:
    """Remember ``client`` for the exit hook (registered once, by the first client, after rclpy's import)."""
    global _exit_hook_registered
    with _EXIT_HOOK:
        if not _exit_hook_registered:
            atexit.register(_close_live_clients)
            _exit_hook_registered = True
        _LIVE_CLIENTS.add(client)


def _spin(executor: Any) -> None:
    """The client's executor thread (holds the executor, not the client)."""
    with contextlib.suppress(Exception):  # the context was shut down under us
        executor.spin()


class MobileOClient:
    """Services and actions of a Mobile-O node under ``namespace`` (default ``/mobile_o``).

    ``context``: an initialised rclpy Context to use (default: the global one, initialised if needed).
    Close it with :meth:`close` or a ``with`` block; one left open is closed at interpreter exit.
    """

    def __init__(
        self,
        namespace: str = DEFAULT_NAMESPACE,
        node_name: str | None = None,
        wait_timeout: float = 10.0,
        context: Any = None,
    ) -> None:
        import rclpy
        from action_msgs.msg import GoalStatusArray
        from rclpy.action import ActionClient
        from rclpy.callback_groups import ReentrantCallbackGroup
        from rclpy.executors import MultiThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_action_status_default

        from mobile_o_ros.action import AskScene as AskSceneAction
        from mobile_o_ros.action import EditImage as EditImageAction
        from mobile_o_ros.action import GenerateImage as GenerateImageAction
        from mobile_o_ros.srv import AskScene, EditImage, GenerateImage

        self.namespace = "/" + namespace.strip("/") if namespace.strip("/") else ""
        self.wait_timeout = wait_timeout
        self._owns_rclpy = context is None and not rclpy.ok()
        if self._owns_rclpy:
            rclpy.init()
        self.node = rclpy.create_node(node_name or f"mobile_o_client_{uuid.uuid4().hex[:8]}", context=context)
        group = ReentrantCallbackGroup()
        self.srv_types = {"ask": AskScene, "generate_image": GenerateImage, "edit_image": EditImage}
        self.action_types = {
            "ask": AskSceneAction,
            "generate_image": GenerateImageAction,
            "edit_image": EditImageAction,
        }
        # Deep request/response queues: with the ROS default depth (10), DDS drops requests of a burst.
        qos = QoSProfile(depth=256, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
        self._services = {
            name: self.node.create_client(t, self.name(name), qos_profile=qos, callback_group=group)
            for name, t in self.srv_types.items()
        }
        self._actions = {
            name: ActionClient(
                self.node,
                t,
                self.name(name),
                callback_group=group,
                goal_service_qos_profile=qos,
                result_service_qos_profile=qos,
                cancel_service_qos_profile=qos,
            )
            for name, t in self.action_types.items()
        }
        # Feedback straight from each action's feedback topic, routed to its ActionCall by goal id.
        self._routes: collections.OrderedDict[bytes, ActionCall] = collections.OrderedDict()
        feedback_qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self._feedback_subs = {
            name: self.node.create_subscription(
                t.Impl.FeedbackMessage,
                f"{self.name(name)}/_action/feedback",
                self._route_feedback,
                feedback_qos,
                callback_group=group,
            )
            for name, t in self.action_types.items()
        }
        # Each server's goal status list: a goal listed there was accepted even if its response was lost.
        self._statuses = GoalStatuses()
        self._status_subs = [
            self.node.create_subscription(
                GoalStatusArray,
                f"{self.name(name)}/_action/status",
                functools.partial(self._statuses.on_status, self.name(name)),
                qos_profile_action_status_default,
                callback_group=group,
            )
            for name in self.action_types
        ]
        self._executor = MultiThreadedExecutor(num_threads=4, context=context)
        self._executor.add_node(self.node)
        self._closed = False
        self._close_lock = threading.Lock()
        self._thread = threading.Thread(
            target=_spin, args=(self._executor,), name="mobile_o_client", daemon=True
        )
        self._thread.start()
        _track(self)

    def _route_feedback(self, msg: Any) -> None:
        call = self._routes.get(bytes(msg.goal_id.uuid))
        if call is not None:
            call._on_feedback(msg.feedback)

    def name(self, relative: str) -> str:
        """The full name of a service or action (``/mobile_o/ask``)."""
        return f"{self.namespace}/{relative}"

    # ------------------------------------------------------------------------------ plumbing
    def wait_for_services(self, timeout: float | None = None) -> bool:
        """True when the three services and actions are available within ``timeout`` seconds."""
        t = self.wait_timeout if timeout is None else timeout
        return all(c.wait_for_service(timeout_sec=t) for c in self._services.values()) and all(
            a.wait_for_server(timeout_sec=t) for a in self._actions.values()
        )

    def call_async(self, service: str, request: Any) -> Any:
        """Send a request without waiting; return the rclpy Future (``service``: ask, generate_image, ...)."""
        client = self._services[service]
        if not client.wait_for_service(timeout_sec=self.wait_timeout):
            raise ClientError(
                f"service {self.name(service)} not available after {self.wait_timeout} s "
                "(is the node running, in this ROS_DOMAIN_ID?)"
            )
        return client.call_async(request)

    def call(self, service: str, request: Any, timeout: float | None = None) -> Any:
        """Call a service and wait for its response."""
        return _wait(self.call_async(service, request), timeout, self.name(service))

    def send_goal(self, action: str, goal: Any, timeout: float | None = None) -> ActionCall:
        """Send an action goal; returns an :class:`ActionCall` (feedback iterator, cancel, result)."""
        client = self._actions[action]
        if not client.wait_for_server(timeout_sec=self.wait_timeout):
            raise ClientError(f"action {self.name(action)} not available after {self.wait_timeout} s")
        # The server's goal services can be found before our feedback subscription is matched to its
        # publisher; feedback sent before that is lost (a fresh CLI process once got none of a short edit's).
        sub, deadline = self._feedback_subs[action], time.monotonic() + self.wait_timeout
        # Subscription.get_publisher_count (matched publishers) is rclpy 7+ (Jazzy, Kilted); Humble's rclpy
        # has only the graph's count of the topic's publishers, which discovery fills in at about that time.
        publishers = getattr(sub, "get_publisher_count", None) or (
            lambda: self.node.count_publishers(sub.topic_name)
        )
        while publishers() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        while len(self._routes) > 256:  # forget the oldest goals
            self._routes.popitem(last=False)
        wait = timeout if timeout is not None else self.wait_timeout
        return ActionCall(client, goal, self.name(action), wait, self._routes, self._statuses)

    # ------------------------------------------------------------------------------ requests
    def ask_request(
        self,
        question: str,
        image: Any = None,
        camera: str = "",
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = -1,
    ) -> Any:
        """An AskScene request (``image``: None = the camera's latest frame, an RGB array or an Image)."""
        return self.srv_types["ask"].Request(
            question=question,
            camera=camera,
            image=_image_msg(image),
            max_new_tokens=int(max_new_tokens),
            temperature=float(temperature),
            seed=int(seed),
        )

    def generate_request(
        self, prompt: str, steps: int = 0, guidance_scale: float = 0.0, seed: int = -1
    ) -> Any:
        """A GenerateImage request (0 = the node's defaults)."""
        return self.srv_types["generate_image"].Request(
            prompt=prompt, steps=int(steps), guidance_scale=float(guidance_scale), seed=int(seed)
        )

    def edit_request(
        self,
        instruction: str,
        image: Any = None,
        camera: str = "",
        steps: int = 0,
        guidance_scale: float = 0.0,
        seed: int = -1,
    ) -> Any:
        """An EditImage request (``image``: None = the camera's latest frame)."""
        return self.srv_types["edit_image"].Request(
            instruction=instruction,
            camera=camera,
            image=_image_msg(image),
            steps=int(steps),
            guidance_scale=float(guidance_scale),
            seed=int(seed),
        )

    def ask(
        self,
        question: str,
        image: Any = None,
        camera: str = "",
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = -1,
        timeout: float | None = None,
    ) -> Any:
        """Call ``ask``; returns the AskScene response (check ``success`` and ``message``)."""
        return self.call(
            "ask", self.ask_request(question, image, camera, max_new_tokens, temperature, seed), timeout
        )

    def generate(
        self,
        prompt: str,
        steps: int = 0,
        guidance_scale: float = 0.0,
        seed: int = -1,
        timeout: float | None = None,
    ) -> Any:
        """Call ``generate_image``; returns the GenerateImage response (``image`` is rgb8)."""
        return self.call(
            "generate_image", self.generate_request(prompt, steps, guidance_scale, seed), timeout
        )

    def edit(
        self,
        instruction: str,
        image: Any = None,
        camera: str = "",
        steps: int = 0,
        guidance_scale: float = 0.0,
        seed: int = -1,
        timeout: float | None = None,
    ) -> Any:
        """Call ``edit_image``; returns the EditImage response."""
        return self.call(
            "edit_image", self.edit_request(instruction, image, camera, steps, guidance_scale, seed), timeout
        )

    # ------------------------------------------------------------------------------ actions
    def ask_action(
        self,
        question: str,
        image: Any = None,
        camera: str = "",
        max_new_tokens: int = 0,
        temperature: float = 0.0,
        seed: int = -1,
    ) -> ActionCall:
        """Start an ``ask`` goal; its feedback carries the answer so far (``text``, ``num_tokens``)."""
        req = self.ask_request(question, image, camera, max_new_tokens, temperature, seed)
        goal = self.action_types["ask"].Goal(
            question=req.question,
            camera=req.camera,
            image=req.image,
            max_new_tokens=req.max_new_tokens,
            temperature=req.temperature,
            seed=req.seed,
        )
        return self.send_goal("ask", goal)

    def ask_stream(self, question: str, **kwargs: Any) -> Iterator[str]:
        """Yield the answer so far after every token (the last item is the full answer)."""
        call = self.ask_action(question, **kwargs)
        last = ""
        for fb in call:
            last = fb.text
            yield last
        result, _ = call.result()
        if not result.success:
            raise ClientError(result.message)
        if result.answer != last:
            yield result.answer

    def generate_action(
        self, prompt: str, steps: int = 0, guidance_scale: float = 0.0, seed: int = -1
    ) -> ActionCall:
        """Start a ``generate_image`` goal; feedback (step, total) per denoising step."""
        goal = self.action_types["generate_image"].Goal(
            prompt=prompt, steps=int(steps), guidance_scale=float(guidance_scale), seed=int(seed)
        )
        return self.send_goal("generate_image", goal)

    def edit_action(
        self,
        instruction: str,
        image: Any = None,
        camera: str = "",
        steps: int = 0,
        guidance_scale: float = 0.0,
        seed: int = -1,
    ) -> ActionCall:
        """Start an ``edit_image`` goal; feedback (step, total) per denoising step."""
        goal = self.action_types["edit_image"].Goal(
            instruction=instruction,
            camera=camera,
            image=_image_msg(image),
            steps=int(steps),
            guidance_scale=float(guidance_scale),
            seed=int(seed),
        )
        return self.send_goal("edit_image", goal)

    # ------------------------------------------------------------------------------ helpers
    @staticmethod
    def image_array(msg: Any) -> np.ndarray:
        """A result ``sensor_msgs/Image`` as an HxWx3 uint8 RGB array."""
        return images.image_to_rgb(msg, "result image")

    def close(self) -> None:
        """Stop and join the executor thread, destroy the node, and shut rclpy down if this client started it.

        Idempotent; called at interpreter exit for a client that is still open.
        """
        import rclpy

        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        _LIVE_CLIENTS.discard(self)
        self._executor.shutdown(timeout_sec=2.0)
        self._thread.join(timeout=5.0)
        for a in self._actions.values():
            a.destroy()
        self.node.destroy_node()
        if self._owns_rclpy:
            rclpy.try_shutdown()
        self._thread.join(timeout=5.0)  # a spin that missed the executor's shutdown ends with the context

    def __enter__(self) -> MobileOClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
