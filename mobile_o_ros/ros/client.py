"""A Python client for the Mobile-O ROS 2 node: services (blocking calls) and actions (feedback + cancel).

.. code-block:: python

    from mobile_o_ros.ros.client import GenerateRequest, MobileOClient, Status

    with MobileOClient("/mobile_o") as mo:
        print(mo.ask("What is in front of the robot?").answer)      # latest frame of the first camera
        rgb = mo.image_array(mo.generate(GenerateRequest("a red cube on a table", steps=20)).image)
        call = mo.generate_action("a red cube", steps=20)             # keywords build the request too
        for fb in call:                                               # feedback: steps done, total
            if fb.step == 5:
                call.cancel()
        result, goal_status = call.result()
        print(goal_status, Status(result.status), result.steps_done)  # CANCELED CANCELLED 6

Every method takes a request dataclass (:class:`AskRequest`, :class:`GenerateRequest`,
:class:`EditRequest`) or its text plus the other fields as keywords. Every response and result carries
``status`` (:class:`Status`: OK, BUSY, NOT_ACTIVE, INVALID, CANCELLED, FAILED) beside ``success`` and a
human-readable ``message``.

The client owns a small node spun by a MultiThreadedExecutor in a background thread (llama_ros style), so
every method can be called from plain Python code. ``rclpy.init()`` is called when needed (and
``rclpy.shutdown()`` on :meth:`MobileOClient.close` in that case). A client that is never closed is closed
at interpreter exit, before Python tears down the threads still inside rcl. The rclpy behaviours this
client works around are in :mod:`mobile_o_ros.ros.rclpy_compat`.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import dataclasses
import functools
import math
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from mobile_o_ros.ros import images, rclpy_compat
from mobile_o_ros.ros.outcomes import NamedIntEnum, Status

__all__ = [
    "DEFAULT_NAMESPACE",
    "ActionCall",
    "AskRequest",
    "ClientError",
    "EditRequest",
    "GenerateRequest",
    "GoalStatus",
    "MobileOClient",
    "Status",
]

DEFAULT_NAMESPACE = "/mobile_o"


class ClientError(RuntimeError):
    """The server is unreachable, a goal was rejected, or a wait timed out."""


class GoalStatus(NamedIntEnum):
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


# ==================================================================================== requests
def _image_msg(image: Any) -> Any:
    """None → an empty Image (use the camera); an HxWx3 uint8 RGB array → rgb8; an Image is kept."""
    from sensor_msgs.msg import Image

    if image is None:
        return Image()
    if isinstance(image, np.ndarray):
        return images.rgb_to_image(image)
    return image


_CASTS = {"str": str, "int": int, "float": float}


class _Request:
    """The fields of a service request, which are also its action's goal."""

    #: The service and action name (``ask``, ``generate_image``, ``edit_image``).
    NAME: ClassVar[str]

    def to_msg(self, msg_type: Any) -> Any:
        """This request as ``msg_type`` (the service's Request or the action's Goal: the same fields)."""
        values = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            values[f.name] = _image_msg(value) if f.name == "image" else _CASTS[str(f.type)](value)
        return msg_type(**values)


@dataclass
class AskRequest(_Request):
    """A question about the latest frame of a camera, or about an inline image."""

    NAME: ClassVar[str] = "ask"

    question: str
    #: None: the camera's latest frame; an HxWx3 uint8 RGB array or a ``sensor_msgs/Image``: sent inline.
    image: Any = None
    #: Camera to take the frame from; empty = the node's first camera. Ignored with an inline image.
    camera: str = ""
    #: Answer tokens; 0 = the node's default (its parameter, else the model's).
    max_new_tokens: int = 0
    #: 0 = greedy decoding.
    temperature: float = 0.0
    #: -1 = random.
    seed: int = -1


@dataclass
class GenerateRequest(_Request):
    """An image from a text prompt."""

    NAME: ClassVar[str] = "generate_image"

    prompt: str
    #: Denoising steps; 0 = the node's default (its parameter, else the model's).
    steps: int = 0
    #: Classifier-free guidance; 0 = the node's default (its parameter, else the model's).
    guidance_scale: float = 0.0
    #: -1 = random; the seed used comes back in the result.
    seed: int = -1


@dataclass
class EditRequest(_Request):
    """An edit of the latest frame of a camera, or of an inline image, following an instruction."""

    NAME: ClassVar[str] = "edit_image"

    instruction: str
    #: None: the camera's latest frame; an HxWx3 uint8 RGB array or a ``sensor_msgs/Image``: sent inline.
    image: Any = None
    #: Camera to take the frame from; empty = the node's first camera. Ignored with an inline image.
    camera: str = ""
    #: Denoising steps; 0 = the node's default (its parameter, else the model's).
    steps: int = 0
    #: Classifier-free guidance; 0 = the node's default (its parameter, else the model's).
    guidance_scale: float = 0.0
    #: -1 = random; the seed used comes back in the result.
    seed: int = -1


#: Any of the three requests.
Request = AskRequest | GenerateRequest | EditRequest
R = TypeVar("R", AskRequest, GenerateRequest, EditRequest)


def _as_request(cls: type[R], request: R | str, fields: dict[str, Any]) -> R:
    """``request`` itself, or ``cls(request, **fields)`` when it is the text."""
    if isinstance(request, cls):
        if fields:
            raise TypeError(f"give a {cls.__name__} or keywords, not both ({', '.join(fields)})")
        return request
    return cls(request, **fields)  # type: ignore[arg-type]


# ==================================================================================== actions
def _progress(feedback: Any) -> int:
    """Tokens (ask) or steps (generate/edit) reported by one feedback message."""
    return int(feedback.num_tokens if hasattr(feedback, "num_tokens") else feedback.step)


def _expected_progress(result: Any, last: Any) -> int | None:
    """How far the feedback must go for this result (None: unknown)."""
    if hasattr(result, "num_tokens"):
        return int(result.num_tokens)
    if result.steps_done or result.status != Status.OK:
        return int(result.steps_done)
    return None if last is None else int(last.total)  # a server that leaves steps_done unset


def _wait(future: Any, timeout: float | None, what: str) -> Any:
    """Block until an rclpy future completes (it is completed by the client's executor thread)."""
    until = time.monotonic() + (math.inf if timeout is None else timeout)
    if rclpy_compat.wait_done([future], until) is None:
        raise ClientError(f"timed out after {timeout} s waiting for {what}")
    if future.exception() is not None:
        raise ClientError(f"{what} failed: {future.exception()}")
    return future.result()


class ActionCall:
    """One action goal in flight: iterate for feedback, :meth:`cancel`, :meth:`result`.

    Feedback comes from the action's feedback topic, routed by goal id, and the iterator waits briefly
    after the result for the feedback the result says was sent (:class:`rclpy_compat.FeedbackStream`).
    """

    #: Seconds without a goal response before the request is sent again (same goal id).
    GOAL_RESEND_S = 5.0

    def __init__(
        self,
        action_client: Any,
        action_type: Any,
        goal: Any,
        name: str,
        timeout: float | None,
        routes: dict[bytes, ActionCall],
        statuses: rclpy_compat.GoalStatuses | None = None,
        goal_id: bytes | None = None,
    ) -> None:
        self._name = name
        self._stream = rclpy_compat.FeedbackStream()
        self._result_future: Any = None
        self._result: tuple[Any, GoalStatus] | None = None
        goal_id = goal_id or uuid.uuid4().bytes
        routes[goal_id] = self
        try:
            sent = rclpy_compat.send_goal(
                action_client, action_type, name, goal, timeout, statuses, self.GOAL_RESEND_S, goal_id
            )
        except rclpy_compat.GoalSendError as err:
            raise ClientError(str(err)) from err
        self.goal_handle = sent.handle
        #: Goal requests sent again because no response came within :attr:`GOAL_RESEND_S`.
        self.resends = sent.resends
        #: True when the goal response was lost and the goal was found in the server's status list.
        self.adopted = sent.adopted
        self._result_future = self.goal_handle.get_result_async()
        self._result_future.add_done_callback(lambda _f: self._stream.finish())

    @property
    def received(self) -> list[tuple[float, Any]]:
        """(time.monotonic() at arrival, feedback) for every feedback message, in arrival order."""
        return self._stream.received

    def on_feedback(self, feedback: Any) -> None:
        """One feedback message of this goal (routed here by the client)."""
        self._stream.put(feedback)

    def __iter__(self) -> Iterator[Any]:
        """``for fb in call`` is ``call.feedback()``: feedback until the goal finishes, no timeout."""
        return self.feedback()

    def feedback(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield feedback messages until the goal finishes (``timeout``: max seconds between messages)."""

        def caught_up(last: Any) -> bool:
            expected = _expected_progress(self.result()[0], last)
            return expected is not None and (0 if last is None else _progress(last)) >= expected

        return self._stream.iterate(
            timeout, caught_up, lambda: ClientError(f"no {self._name} feedback for {timeout} s")
        )

    def cancel(self, timeout: float | None = 10.0) -> bool:
        """Request cancellation; True when the server accepted it (the result then says CANCELLED)."""
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


# ==================================================================================== exit hook
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


# ==================================================================================== the client
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
        self._services: dict[str, Any] = {
            name: self.node.create_client(t, self.name(name), qos_profile=qos, callback_group=group)
            for name, t in self.srv_types.items()
        }
        self._actions: dict[str, Any] = {
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
        self._feedback_subs = {
            name: rclpy_compat.subscribe_feedback(self.node, t, self.name(name), self._route_feedback, group)
            for name, t in self.action_types.items()
        }
        # Each server's goal status list: a goal listed there was accepted even if its response was lost.
        self._statuses = rclpy_compat.GoalStatuses()
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

    def _route_feedback(self, goal_id: bytes, feedback: Any) -> None:
        call = self._routes.get(goal_id)
        if call is not None:
            call.on_feedback(feedback)

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
        """Send a request message without waiting; return the rclpy Future (``service``: ask, generate_image,
        edit_image)."""
        client = self._services[service]
        if not client.wait_for_service(timeout_sec=self.wait_timeout):
            raise ClientError(
                f"service {self.name(service)} not available after {self.wait_timeout} s "
                "(is the node running, in this ROS_DOMAIN_ID?)"
            )
        return client.call_async(request)

    def call(self, service: str, request: Any, timeout: float | None = None) -> Any:
        """Call a service with a request message and wait for its response."""
        return _wait(self.call_async(service, request), timeout, self.name(service))

    def send_goal(self, action: str, goal: Any, timeout: float | None = None) -> ActionCall:
        """Send an action goal message; returns an :class:`ActionCall` (feedback iterator, cancel, result)."""
        client = self._actions[action]
        if not client.wait_for_server(timeout_sec=self.wait_timeout):
            raise ClientError(f"action {self.name(action)} not available after {self.wait_timeout} s")
        rclpy_compat.wait_for_feedback_publisher(self.node, self._feedback_subs[action], self.wait_timeout)
        while len(self._routes) > 256:  # forget the oldest goals
            self._routes.popitem(last=False)
        wait = timeout if timeout is not None else self.wait_timeout
        return ActionCall(
            client, self.action_types[action], goal, self.name(action), wait, self._routes, self._statuses
        )

    def request_msg(self, request: Request) -> Any:
        """The service request message of ``request``."""
        return request.to_msg(self.srv_types[request.NAME].Request)

    def call_service(self, request: Request, timeout: float | None = None) -> Any:
        """Call the service of ``request`` and wait for its response."""
        return self.call(request.NAME, self.request_msg(request), timeout)

    def start_goal(self, request: Request) -> ActionCall:
        """Send ``request`` as a goal of its action; returns the :class:`ActionCall`."""
        return self.send_goal(request.NAME, request.to_msg(self.action_types[request.NAME].Goal))

    # ------------------------------------------------------------------------------ the three tasks
    def ask(self, request: AskRequest | str, *, timeout: float | None = None, **fields: Any) -> Any:
        """Call ``ask``; returns the AskScene response (``status``, ``answer``, ``num_tokens``,
        ``latency_ms``, ``time_to_first_token_ms``, and ``warm_frame``: whether the camera's frame was warm).

        ``request``: an :class:`AskRequest`, or the question with the other fields as keywords.
        """
        return self.call_service(_as_request(AskRequest, request, fields), timeout)

    def generate(self, request: GenerateRequest | str, *, timeout: float | None = None, **fields: Any) -> Any:
        """Call ``generate_image``; returns the GenerateImage response (``status``, ``image`` rgb8, ``seed``).

        ``request``: a :class:`GenerateRequest`, or the prompt with the other fields as keywords.
        """
        return self.call_service(_as_request(GenerateRequest, request, fields), timeout)

    def edit(self, request: EditRequest | str, *, timeout: float | None = None, **fields: Any) -> Any:
        """Call ``edit_image``; returns the EditImage response (``status``, ``image``, ``source_header``).

        ``request``: an :class:`EditRequest`, or the instruction with the other fields as keywords.
        """
        return self.call_service(_as_request(EditRequest, request, fields), timeout)

    def ask_action(self, request: AskRequest | str, **fields: Any) -> ActionCall:
        """Start an ``ask`` goal; its feedback carries the answer so far (``text``, ``num_tokens``)."""
        return self.start_goal(_as_request(AskRequest, request, fields))

    def generate_action(self, request: GenerateRequest | str, **fields: Any) -> ActionCall:
        """Start a ``generate_image`` goal; feedback (step, total) per denoising step."""
        return self.start_goal(_as_request(GenerateRequest, request, fields))

    def edit_action(self, request: EditRequest | str, **fields: Any) -> ActionCall:
        """Start an ``edit_image`` goal; feedback (step, total) per denoising step."""
        return self.start_goal(_as_request(EditRequest, request, fields))

    def ask_stream(self, request: AskRequest | str, **fields: Any) -> Iterator[str]:
        """Yield the answer so far after every token (the last item is the full answer).

        Raises :class:`ClientError` with the node's message when the status is not OK.
        """
        call = self.ask_action(request, **fields)
        last = ""
        for fb in call:
            last = fb.text
            yield last
        result, _ = call.result()
        if result.status != Status.OK:
            raise ClientError(result.message)
        if result.answer != last:
            yield result.answer

    # Request messages, for call() / call_async() (fields as in the request dataclasses).
    def ask_request(self, question: str, **fields: Any) -> Any:
        """An AskScene request message (fields of :class:`AskRequest`)."""
        return self.request_msg(AskRequest(question, **fields))

    def generate_request(self, prompt: str, **fields: Any) -> Any:
        """A GenerateImage request message (fields of :class:`GenerateRequest`)."""
        return self.request_msg(GenerateRequest(prompt, **fields))

    def edit_request(self, instruction: str, **fields: Any) -> Any:
        """An EditImage request message (fields of :class:`EditRequest`)."""
        return self.request_msg(EditRequest(instruction, **fields))

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
