"""The Mobile-O lifecycle node: scene questions, image generation and editing over services and actions.

One node serves all three jobs from one model load. The model belongs to a single worker thread
(:mod:`mobile_o_ros.ros.worker`); ROS callbacks validate the request, submit a job and wait on its future
(services and actions run in a ReentrantCallbackGroup on a MultiThreadedExecutor, so waiting never
blocks the executor). This module holds the lifecycle and the wiring; the parts live beside it:

* :mod:`~mobile_o_ros.ros.frames`: camera subscriptions and the latest frame per camera;
* :mod:`~mobile_o_ros.ros.warm`: warm frames (each camera's newest frame seen ahead of questions);
* :mod:`~mobile_o_ros.ros.requests`: request validation and defaults, worker jobs, the services;
* :mod:`~mobile_o_ros.ros.goals`: the actions' goals (feedback, cancel, final state);
* :mod:`~mobile_o_ros.ros.continuous`: the continuous question;
* :mod:`~mobile_o_ros.ros.annotations`: live annotation with a tasks file;
* :mod:`~mobile_o_ros.ros.diagnostics`: the ``/diagnostics`` status;
* :mod:`~mobile_o_ros.ros.outcomes`: the ``status`` of every result.

Lifecycle:

* configure: read parameters, start the worker, load ``model_dir`` with ``backend`` (on the worker),
  create the ``answer`` and ``generated_image`` publishers;
* activate: subscribe to the cameras, start the continuous question (if set), accept requests;
* deactivate: unsubscribe, stop the continuous question; requests are answered "not active";
* cleanup: cancel queued jobs, free the model, stop the worker.

Services and action servers exist in every state, so a request to an inactive node gets a clear
``success=false`` (``status`` NOT_ACTIVE) answer instead of a timeout.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.action import ActionServer
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from mobile_o_ros.action import AskScene as AskSceneAction
from mobile_o_ros.action import EditImage as EditImageAction
from mobile_o_ros.action import GenerateImage as GenerateImageAction
from mobile_o_ros.msg import SceneAnswer
from mobile_o_ros.ros import params, rclpy_compat
from mobile_o_ros.ros.annotations import LiveAnnotation
from mobile_o_ros.ros.continuous import ContinuousQuestion
from mobile_o_ros.ros.diagnostics import Diagnostics
from mobile_o_ros.ros.frames import Cameras
from mobile_o_ros.ros.goals import Goals
from mobile_o_ros.ros.requests import Requests
from mobile_o_ros.ros.state import TAG, NodeState
from mobile_o_ros.ros.warm import WarmFrames
from mobile_o_ros.ros.worker import Worker
from mobile_o_ros.srv import AskScene, EditImage, GenerateImage

#: Outputs: reliable, a few deep (answers and generated images are not sensor streams).
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Services and action services: deep enough that a burst of requests is never dropped by DDS history
#: (the ROS default depth of 10 silently loses the 11th request sent at once); a client sending bursts
#: needs a deep request queue as well (MobileOClient uses this profile).
SERVICE_QOS = QoSProfile(depth=256, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Action feedback (one message per token or step).
FEEDBACK_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)


def _precision(model_info: dict[str, Any]) -> str:
    """``int8: GRAPHS``, or ``no int8 graphs``, for the Configured log line."""
    int8 = model_info.get("int8_graphs") or []
    return f"int8: {', '.join(int8)}" if int8 else "no int8 graphs"


class MobileONode(LifecycleNode):
    """Lifecycle node serving Mobile-O: ``ask``, ``generate_image``, ``edit_image`` (services + actions)."""

    def __init__(
        self, node_name: str = params.NODE_NAME, namespace: str = params.DEFAULT_NAMESPACE, **kwargs: Any
    ) -> None:
        super().__init__(node_name, namespace=namespace, **kwargs)
        params.declare_all(self)
        group = ReentrantCallbackGroup()
        self._worker = Worker(name="mobile_o_worker")
        self._state = NodeState(
            cfg=params.Settings({p.name: self.get_parameter(p.name).value for p in params.PARAMETERS}),
            name=self.get_fully_qualified_name(),
        )
        self._cameras = Cameras(self, self._state, group)
        self._warm = WarmFrames(self, self._state, self._worker, self._cameras, group)
        self._requests = Requests(self, self._state, self._worker, self._cameras, self._warm)
        self._goals = Goals(self, self._requests)
        self._continuous = ContinuousQuestion(
            self, self._state, self._worker, self._cameras, self._requests, group, warm=self._warm
        )
        self._annotation = LiveAnnotation(
            self, self._state, self._worker, self._cameras, group, warm=self._warm
        )
        self._diagnostics = Diagnostics(
            self._state, self._worker, self._cameras, self._annotation.diagnostics, warm=self._warm
        )
        #: Set by main(): the shutdown transition (finalized) also ends the process.
        self.exit_when_finalized = False

        self._has_post_set = rclpy_compat.has_post_set_callback(self)
        self.add_on_set_parameters_callback(self._validate_parameters)
        if self._has_post_set:
            self.add_post_set_parameters_callback(self._apply_parameters)

        qos = SERVICE_QOS
        for srv_type, name, callback in (
            (AskScene, "ask", self._requests.on_ask),
            (GenerateImage, "generate_image", self._requests.on_generate),
            (EditImage, "edit_image", self._requests.on_edit),
        ):
            self.create_service(srv_type, name, callback, qos_profile=qos, callback_group=group)
        self._action_servers = [
            ActionServer(
                self,
                action,
                name,
                execute_callback=execute,
                goal_callback=self._goals.on_goal,
                cancel_callback=self._goals.on_cancel,
                callback_group=group,
                goal_service_qos_profile=qos,
                result_service_qos_profile=qos,
                cancel_service_qos_profile=qos,
                feedback_pub_qos_profile=FEEDBACK_QOS,
            )
            for action, name, execute in (
                (AskSceneAction, "ask", self._goals.on_ask),
                (GenerateImageAction, "generate_image", self._goals.on_generate),
                (EditImageAction, "edit_image", self._goals.on_edit),
            )
        ]
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(
            float(self._state.cfg.diagnostics_period_s), self._publish_diagnostics, callback_group=group
        )
        self.get_logger().info(f"{TAG} Created node {self.get_fully_qualified_name()} (unconfigured)")

    # ================================================================================ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, start the worker and load the model on it."""
        log = self.get_logger()
        log.info(f"{TAG} Configuring...")
        s = self._state
        try:
            s.cfg = params.read_all(self)
            model_dir = str(s.cfg.model_dir).strip()
            if not model_dir:
                raise ValueError("parameter model_dir is empty: set it to a Mobile-O export folder")
            if not (Path(model_dir) / "manifest.json").is_file():
                raise ValueError(f"model_dir {model_dir!r} has no manifest.json (not an export folder)")
            self._worker.configure(s.cfg.busy_policy, s.cfg.max_queue)
            self._worker.start()
            t0 = time.monotonic()
            s.model = self._worker.call(self._load_model, kind="load")
            s.model_info = dict(s.model.info())
            load_s = time.monotonic() - t0
            self._annotation.configure(OUTPUT_QOS)
        except Exception as err:
            s.last_error = f"configure failed: {err}"
            log.error(f"{TAG} {s.last_error}")
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        s.answer_pub = self.create_lifecycle_publisher(SceneAnswer, "answer", OUTPUT_QOS)
        s.image_pub = self.create_lifecycle_publisher(Image, "generated_image", OUTPUT_QOS)
        s.last_error = ""
        s.label = "inactive"
        log.info(
            f"{TAG} Configured: model {s.model_info.get('model')} ({_precision(s.model_info)}) from "
            f"{s.cfg.model_dir} on "
            f"{s.cfg.backend} in {load_s:.2f} s (busy_policy={s.cfg.busy_policy}, "
            f"max_queue={s.cfg.max_queue})"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the cameras, start the continuous question and accept requests."""
        log = self.get_logger()
        log.info(f"{TAG} Activating...")
        s = self._state
        try:
            self._cameras.subscribe()
            self._continuous.start()
            self._warm.start()
            self._annotation.start()
        except Exception as err:
            s.last_error = f"activate failed: {err}"
            log.error(f"{TAG} {s.last_error}")
            self._cameras.unsubscribe()
            return TransitionCallbackReturn.FAILURE
        ret = super().on_activate(state)
        s.active = True
        s.label = "active"
        log.info(
            f"{TAG} Activated: services and actions ask, generate_image, edit_image under "
            f"{self.get_namespace()}; cameras {list(s.cfg.camera_topics)}"
            + (" (compressed)" if s.cfg.use_compressed else "")
        )
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop accepting requests, unsubscribe, stop the continuous question."""
        log = self.get_logger()
        log.info(f"{TAG} Deactivating...")
        self._state.active = False
        self._continuous.stop()
        self._warm.stop()
        self._annotation.stop()
        self._cameras.unsubscribe()
        ret = super().on_deactivate(state)
        self._state.label = "inactive"
        log.info(f"{TAG} Deactivated (model stays loaded; requests are refused until activate)")
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Cancel queued jobs, free the model and stop the worker."""
        log = self.get_logger()
        log.info(f"{TAG} Cleaning up...")
        self._release_model()
        self._annotation.cleanup()
        s = self._state
        for pub in (s.answer_pub, s.image_pub):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        s.answer_pub = s.image_pub = None
        s.label = "unconfigured"
        log.info(f"{TAG} Cleaned up (model freed)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything (from any state)."""
        self.get_logger().info(f"{TAG} Shutting down...")
        self.release()
        self._state.label = "finalized"
        if self.exit_when_finalized:
            self.get_logger().info(f"{TAG} Shut down (finalized): the process exits")
            # after the change_state response is sent; main() then returns
            threading.Timer(0.5, self.context.try_shutdown).start()
        else:
            self.get_logger().info(f"{TAG} Shut down (finalized)")
        return TransitionCallbackReturn.SUCCESS

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free what a failed transition left behind and go back to unconfigured."""
        self.get_logger().error(f"{TAG} Error processing (from {state.label}); releasing the model")
        self.release()
        self._state.label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Idempotent teardown used by shutdown, error processing and ``main()``'s exit path."""
        self._state.active = False
        with contextlib.suppress(Exception):  # the node's handles may already be gone at process exit
            self._continuous.stop()
        with contextlib.suppress(Exception):
            self._annotation.stop()
        with contextlib.suppress(Exception):
            self._warm.stop()
        with contextlib.suppress(Exception):
            self._cameras.unsubscribe()
        self._continuous.forget()
        self._warm.forget()
        self._annotation.forget()
        self._release_model()

    def say(self, level: str, message: str) -> None:
        """Log through rclpy while the context is valid, else to stderr (rosout is gone after shutdown)."""
        if self.context.ok():
            with contextlib.suppress(Exception):
                getattr(self.get_logger(), level)(f"{TAG} {message}")
                return
        print(f"[{level.upper()}] [{self._state.name}]: {TAG} {message}", file=sys.stderr)

    def _load_model(self) -> Any:
        """Runs on the worker thread: the backend (and its device context) belongs to that thread."""
        from mobile_o_ros.runtime.engine import MobileORuntime

        cfg = self._state.cfg
        options: dict[str, Any] = {}
        if cfg.backend == "tensorrt" and str(cfg.engine_dir).strip():
            options["engine_dir"] = str(cfg.engine_dir)
        return MobileORuntime.load(cfg.model_dir, backend=cfg.backend, **options)

    def _release_model(self) -> None:
        n = self._worker.cancel_all("the node is cleaning up (model unloaded)")
        if n:
            self.say("info", f"Cancelled {n} pending job(s)")
        model, self._state.model = self._state.model, None
        if model is not None and self._worker.alive:
            try:
                self._worker.call(model.close, timeout=30.0, kind="close")
            except Exception as err:
                self.say("warning", f"closing the model failed: {err}")
        if not self._worker.stop(timeout=30.0):
            self.say("warning", "the worker thread did not stop within 30 s")
        self._warm.clear()

    def _publish_diagnostics(self) -> None:
        msg = self._diagnostics.message(self.get_clock().now().to_msg())
        with contextlib.suppress(Exception):  # e.g. during shutdown
            self._pub_diag.publish(msg)

    # ================================================================================ parameters
    def _validate_parameters(self, changed: list[Any]) -> Any:
        from rcl_interfaces.msg import SetParametersResult

        for p in changed:
            reason = params.check_value(p.name, p.value)
            if reason:
                return SetParametersResult(successful=False, reason=reason)
        if not self._has_post_set:  # Humble: apply here, the values are valid
            self._apply_parameters(changed)
        return SetParametersResult(successful=True)

    def _apply_parameters(self, changed: list[Any]) -> None:
        """Apply run-time changes; configure-only ones are noted and used at the next configure."""
        s = self._state
        restart_continuous = restart_annotation = False
        for p in changed:
            spec = params.SPECS.get(p.name)
            if spec is None:
                continue
            if spec.configure_only:
                if s.label != "unconfigured":
                    self.get_logger().info(f"{TAG} {p.name} changed: applies at the next {spec.applies}")
                continue
            s.cfg.values[p.name] = list(p.value) if isinstance(spec.default, list) else p.value
            restart_continuous = restart_continuous or p.name.startswith("continuous_")
            restart_annotation = restart_annotation or p.name == "annotation_rate_hz"
        try:
            self._worker.configure(s.cfg.busy_policy, s.cfg.max_queue)
        except ValueError as err:
            self.get_logger().error(f"{TAG} {err}")
        if restart_continuous and s.active:
            self._continuous.stop()
            self._continuous.start()
        if restart_annotation and s.active:
            self._annotation.stop()
            self._annotation.start()
        if s.active and any(p.name == "warm_rate_hz" for p in changed):
            self._warm.restart()
