"""The Mobile-O lifecycle node: scene questions, image generation and editing over services and actions.

One node serves all three jobs from one model load. The model belongs to a single worker thread
(:mod:`mobile_o_ros.ros.worker`); ROS callbacks validate the request, submit a job and wait on its future
(services and actions run in a ReentrantCallbackGroup on a MultiThreadedExecutor, so waiting never
blocks the executor).

Lifecycle:

* configure: read parameters, start the worker, load ``model_dir`` with ``backend`` (on the worker),
  create the ``answer`` and ``generated_image`` publishers;
* activate: subscribe to the cameras, start the continuous question (if set), accept requests;
* deactivate: unsubscribe, stop the continuous question; requests are answered "not active";
* cleanup: cancel queued jobs, free the model, stop the worker.

Services and action servers exist in every state, so a request to an inactive node gets a clear
``success=false`` answer instead of a timeout.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from mobile_o_ros import validation
from mobile_o_ros.ros import images, params
from mobile_o_ros.ros.worker import BusyError, Job, JobCancelled, Worker, WorkerStopped
from mobile_o_ros.validation import InvalidRequest

try:  # Iron and later
    from rclpy.event_handler import SubscriptionEventCallbacks
except ImportError:  # Humble
    from rclpy.qos_event import SubscriptionEventCallbacks  # type: ignore[no-redef]

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import CompressedImage, Image

from mobile_o_ros.action import AskScene as AskSceneAction
from mobile_o_ros.action import EditImage as EditImageAction
from mobile_o_ros.action import GenerateImage as GenerateImageAction
from mobile_o_ros.msg import SceneAnswer
from mobile_o_ros.srv import AskScene, EditImage, GenerateImage

TAG = "[mobile_o]"

#: Outputs: reliable, a few deep (answers and generated images are not sensor streams).
OUTPUT_QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Services and action services: deep enough that a burst of requests is never dropped by DDS history
#: (the ROS default depth of 10 silently loses the 11th request sent at once); a client sending bursts
#: needs a deep request queue as well (MobileOClient uses this profile).
SERVICE_QOS = QoSProfile(depth=256, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)
#: Action feedback (one message per token or step).
FEEDBACK_QOS = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE, history=HistoryPolicy.KEEP_LAST)

#: Pause between the last feedback and the result: feedback (a topic) and the result (a service) travel
#: separately, and rclpy's ActionClient drops feedback that arrives after the result.
FEEDBACK_FLUSH_S = 0.05


def _let_feedback_arrive(last_feedback: float) -> None:
    """Sleep until FEEDBACK_FLUSH_S after the last feedback was published (no-op when long past)."""
    delay = last_feedback + FEEDBACK_FLUSH_S - time.monotonic()
    if last_feedback and delay > 0:
        time.sleep(delay)


class NotActive(InvalidRequest):
    """A request reached a node that is not active."""


@dataclass
class Frame:
    """The latest message of one camera (kept raw; converted when a request uses it)."""

    msg: Any
    received: float  # time.monotonic()
    count: int


@dataclass
class Prepared:
    """A validated request, ready for the worker."""

    kind: str
    run: Callable[[Callable[[], bool]], Any]
    header: Any = None
    camera: str = ""
    #: Appended to a successful response's message (words of the request the model never saw).
    note: str = ""


class MobileONode(LifecycleNode):
    """Lifecycle node serving Mobile-O: ``ask``, ``generate_image``, ``edit_image`` (services + actions)."""

    def __init__(
        self, node_name: str = params.NODE_NAME, namespace: str = params.DEFAULT_NAMESPACE, **kwargs: Any
    ) -> None:
        super().__init__(node_name, namespace=namespace, **kwargs)
        params.declare_all(self)
        self._cbg = ReentrantCallbackGroup()
        self._job_worker = Worker(name="mobile_o_worker")
        self._model: Any = None
        self._model_info: dict[str, Any] = {}
        self._cfg = params.Settings({p.name: self.get_parameter(p.name).value for p in params.PARAMETERS})
        self._is_active = False
        self._state_label = "unconfigured"
        self._last_error = ""
        self._frame_lock = threading.Lock()
        self._frame_cache: dict[str, Frame] = {}
        self._camera_subs: list[Any] = []
        self._pub_answer: Any = None
        self._pub_image: Any = None
        self._timer_continuous: Any = None
        self._continuous_kick: Any = None  # guard condition: a tick deferred while the last job ran
        self._continuous_deferred = False
        self._continuous_lock = threading.Lock()  # one tick at a time (the callback group is reentrant)
        self._continuous_job: Job | None = None
        self._goal_jobs: dict[bytes, tuple[Job, list[int]]] = {}  # goal id -> (job, [steps/tokens done])
        self._cancelled_goals: dict[bytes, int] = {}  # goal id -> steps/tokens done when the cancel came
        self._display_name = self.get_fully_qualified_name()
        #: Set by main(): the shutdown transition (finalized) also ends the process.
        self.exit_when_finalized = False
        self._goal_lock = threading.Lock()

        self._has_post_set = hasattr(self, "add_post_set_parameters_callback")  # Iron and later
        self.add_on_set_parameters_callback(self._validate_parameters)
        if self._has_post_set:
            self.add_post_set_parameters_callback(self._apply_parameters)

        cbg = self._cbg
        qos = SERVICE_QOS
        self._srv_ask = self.create_service(
            AskScene, "ask", self._on_ask_srv, qos_profile=qos, callback_group=cbg
        )
        self._srv_generate = self.create_service(
            GenerateImage, "generate_image", self._on_generate_srv, qos_profile=qos, callback_group=cbg
        )
        self._srv_edit = self.create_service(
            EditImage, "edit_image", self._on_edit_srv, qos_profile=qos, callback_group=cbg
        )
        self._act_servers = [
            ActionServer(
                self,
                action,
                name,
                execute_callback=execute,
                goal_callback=self._on_goal,
                cancel_callback=self._on_cancel,
                callback_group=cbg,
                goal_service_qos_profile=qos,
                result_service_qos_profile=qos,
                cancel_service_qos_profile=qos,
                feedback_pub_qos_profile=FEEDBACK_QOS,
            )
            for action, name, execute in (
                (AskSceneAction, "ask", self._execute_ask),
                (GenerateImageAction, "generate_image", self._execute_generate),
                (EditImageAction, "edit_image", self._execute_edit),
            )
        ]
        self._pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._timer_diag = self.create_timer(
            float(self._cfg.diagnostics_period_s), self._publish_diagnostics, callback_group=cbg
        )
        self.get_logger().info(f"{TAG} Created node {self.get_fully_qualified_name()} (unconfigured)")

    # ================================================================================ lifecycle
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Read parameters, start the worker and load the model on it."""
        log = self.get_logger()
        log.info(f"{TAG} Configuring...")
        try:
            self._cfg = params.read_all(self)
            model_dir = str(self._cfg.model_dir).strip()
            if not model_dir:
                raise ValueError("parameter model_dir is empty: set it to a Mobile-O export folder")
            if not (Path(model_dir) / "manifest.json").is_file():
                raise ValueError(f"model_dir {model_dir!r} has no manifest.json (not an export folder)")
            self._job_worker.configure(self._cfg.busy_policy, self._cfg.max_queue)
            self._job_worker.start()
            t0 = time.monotonic()
            self._model = self._job_worker.call(self._load_model, kind="load")
            self._model_info = dict(self._model.info())
            load_s = time.monotonic() - t0
        except Exception as err:
            self._last_error = f"configure failed: {err}"
            log.error(f"{TAG} {self._last_error}")
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        self._pub_answer = self.create_lifecycle_publisher(SceneAnswer, "answer", OUTPUT_QOS)
        self._pub_image = self.create_lifecycle_publisher(Image, "generated_image", OUTPUT_QOS)
        self._last_error = ""
        self._state_label = "inactive"
        log.info(
            f"{TAG} Configured: model {self._model_info.get('model')} from {self._cfg.model_dir} on "
            f"{self._cfg.backend} in {load_s:.2f} s (busy_policy={self._cfg.busy_policy}, "
            f"max_queue={self._cfg.max_queue})"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Subscribe to the cameras, start the continuous question and accept requests."""
        log = self.get_logger()
        log.info(f"{TAG} Activating...")
        try:
            self._subscribe_cameras()
            self._start_continuous()
        except Exception as err:
            self._last_error = f"activate failed: {err}"
            log.error(f"{TAG} {self._last_error}")
            self._unsubscribe_cameras()
            return TransitionCallbackReturn.FAILURE
        ret = super().on_activate(state)
        self._is_active = True
        self._state_label = "active"
        log.info(
            f"{TAG} Activated: services and actions ask, generate_image, edit_image under "
            f"{self.get_namespace()}; cameras {list(self._cfg.camera_topics)}"
            + (" (compressed)" if self._cfg.use_compressed else "")
        )
        return ret

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop accepting requests, unsubscribe, stop the continuous question."""
        log = self.get_logger()
        log.info(f"{TAG} Deactivating...")
        self._is_active = False
        self._stop_continuous()
        self._unsubscribe_cameras()
        ret = super().on_deactivate(state)
        self._state_label = "inactive"
        log.info(f"{TAG} Deactivated (model stays loaded; requests are refused until activate)")
        return ret

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Cancel queued jobs, free the model and stop the worker."""
        log = self.get_logger()
        log.info(f"{TAG} Cleaning up...")
        self._release_model()
        for pub in (self._pub_answer, self._pub_image):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._pub_answer = self._pub_image = None
        self._state_label = "unconfigured"
        log.info(f"{TAG} Cleaned up (model freed)")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Release everything (from any state)."""
        self.get_logger().info(f"{TAG} Shutting down...")
        self.release()
        self._state_label = "finalized"
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
        self._state_label = "unconfigured"
        return TransitionCallbackReturn.SUCCESS

    def release(self) -> None:
        """Idempotent teardown used by shutdown, error processing and ``main()``'s exit path."""
        self._is_active = False
        with contextlib.suppress(Exception):  # the node's handles may already be gone at process exit
            self._stop_continuous()
        with contextlib.suppress(Exception):
            self._unsubscribe_cameras()
        self._camera_subs, self._timer_continuous = [], None
        self._release_model()

    def say(self, level: str, message: str) -> None:
        """Log through rclpy while the context is valid, else to stderr (rosout is gone after shutdown)."""
        if self.context.ok():
            with contextlib.suppress(Exception):
                getattr(self.get_logger(), level)(f"{TAG} {message}")
                return
        print(f"[{level.upper()}] [{self._display_name}]: {TAG} {message}", file=sys.stderr)

    def _load_model(self) -> Any:
        """Runs on the worker thread: the backend (and its device context) belongs to that thread."""
        from mobile_o_ros.runtime.engine import MobileORuntime

        options: dict[str, Any] = {}
        if self._cfg.backend == "tensorrt" and str(self._cfg.engine_dir).strip():
            options["engine_dir"] = str(self._cfg.engine_dir)
        return MobileORuntime.load(self._cfg.model_dir, backend=self._cfg.backend, **options)

    def _release_model(self) -> None:
        n = self._job_worker.cancel_all("the node is cleaning up (model unloaded)")
        if n:
            self.say("info", f"Cancelled {n} pending job(s)")
        model, self._model = self._model, None
        if model is not None and self._job_worker.alive:
            try:
                self._job_worker.call(model.close, timeout=30.0, kind="close")
            except Exception as err:
                self.say("warning", f"closing the model failed: {err}")
        if not self._job_worker.stop(timeout=30.0):
            self.say("warning", "the worker thread did not stop within 30 s")

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
        restart_continuous = False
        for p in changed:
            spec = params.SPECS.get(p.name)
            if spec is None:
                continue
            if spec.configure_only:
                if self._state_label != "unconfigured":
                    self.get_logger().info(f"{TAG} {p.name} changed: applies at the next {spec.applies}")
                continue
            value = list(p.value) if isinstance(spec.default, list) else p.value
            self._cfg.values[p.name] = value
            if p.name.startswith("continuous_"):
                restart_continuous = True
        try:
            self._job_worker.configure(self._cfg.busy_policy, self._cfg.max_queue)
        except ValueError as err:
            self.get_logger().error(f"{TAG} {err}")
        if restart_continuous and self._is_active:
            self._stop_continuous()
            self._start_continuous()

    # ================================================================================ cameras
    def _camera_topic(self, camera: str) -> str:
        return camera.rstrip("/") + "/compressed" if self._cfg.use_compressed else camera

    def _subscribe_cameras(self) -> None:
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self._cfg.image_reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            depth=int(self._cfg.image_qos_depth), reliability=reliability, history=HistoryPolicy.KEEP_LAST
        )
        msg_type = CompressedImage if self._cfg.use_compressed else Image
        for camera in self._cfg.camera_topics:
            topic = self._camera_topic(camera)
            events = SubscriptionEventCallbacks(
                incompatible_qos=lambda info, t=topic: self._on_incompatible_qos(t, info)
            )
            sub = self.create_subscription(
                msg_type,
                topic,
                lambda msg, c=camera: self._on_frame(c, msg),
                qos,
                callback_group=self._cbg,
                event_callbacks=events,
            )
            self._camera_subs.append(sub)
            self.get_logger().info(
                f"{TAG} Subscribed to {sub.topic_name} ({msg_type.__name__}, "
                f"{self._cfg.image_reliability}, depth {self._cfg.image_qos_depth})"
            )

    def _unsubscribe_cameras(self) -> None:
        for sub in self._camera_subs:
            self.destroy_subscription(sub)
        self._camera_subs = []
        with self._frame_lock:
            self._frame_cache.clear()

    def _on_incompatible_qos(self, topic: str, info: Any) -> None:
        try:
            from rclpy.qos import qos_policy_name_from_kind

            policy = qos_policy_name_from_kind(info.last_policy_kind)
        except Exception:
            policy = str(info.last_policy_kind)
        self.get_logger().warning(
            f"{TAG} Incompatible QoS on {topic}: a publisher does not offer the requested {policy} "
            f"(we request {self._cfg.image_reliability}, depth {self._cfg.image_qos_depth}); no frames will "
            "arrive from it. Use image_reliability:=best_effort (it matches any publisher)."
        )

    def _on_frame(self, camera: str, msg: Any) -> None:
        """Keep only the latest frame per camera; conversion happens when a request uses it."""
        with self._frame_lock:
            prev = self._frame_cache.get(camera)
            self._frame_cache[camera] = Frame(msg, time.monotonic(), 1 if prev is None else prev.count + 1)

    def _resolve_camera(self, camera: str) -> str:
        cameras = list(self._cfg.camera_topics)
        name = camera.strip()
        if not name:
            return cameras[0]
        if name in cameras:
            return name
        for c in cameras:  # also accept the resolved name ('/mobile_o/camera' for 'camera')
            try:
                if self.resolve_topic_name(c) == self.resolve_topic_name(name):
                    return c
            except Exception:
                continue
        raise InvalidRequest(f"unknown camera {camera!r}; cameras: {', '.join(cameras)}")

    def _latest_frame(self, camera: str) -> tuple[np.ndarray, Any, str]:
        """(RGB pixels, header, camera) of a camera's latest frame, or InvalidRequest."""
        cam = self._resolve_camera(camera)
        with self._frame_lock:
            frame = self._frame_cache.get(cam)
        if frame is None:
            raise InvalidRequest(f"no frame received yet on camera {cam!r} (topic {self._camera_topic(cam)})")
        age = time.monotonic() - frame.received
        max_age = float(self._cfg.max_frame_age_s)
        if max_age > 0 and age > max_age:
            raise InvalidRequest(
                f"latest frame on camera {cam!r} is {age:.1f} s old (max_frame_age_s {max_age:g})"
            )
        rgb = images.to_rgb_any(frame.msg, f"frame from camera {cam!r}")
        return rgb, frame.msg.header, cam

    def _source_image(self, inline: Any, camera: str) -> tuple[np.ndarray, Any, str]:
        """The request's inline image when it carries one, else the camera's latest frame."""
        if not images.is_empty_image(inline):
            return images.image_to_rgb(inline, "inline image"), inline.header, ""
        return self._latest_frame(camera)

    # ================================================================================ requests
    def _check_active(self) -> Any:
        model = self._model
        if not self._is_active or model is None:
            raise NotActive(
                f"not active: the node is {self._state_label}; activate it "
                f"(ros2 lifecycle set {self.get_fully_qualified_name()} activate)"
            )
        return model

    def _steps_and_guidance(self, steps: int, guidance: float) -> tuple[int, float]:
        g = float(guidance)
        if math.isfinite(g) and g == 0.0:
            g = float(self._cfg.default_guidance_scale)
        n = validation.check_steps(int(steps) or int(self._cfg.default_steps), int(self._cfg.max_steps))
        return n, validation.check_guidance(g)

    def _unknown_note(self, what: str, model: Any, text: str) -> str:
        """Log a warning naming the words of ``text`` the model never saw; the note for the response."""
        unknown = model.unknown_words(text)
        if not unknown:
            return ""
        self.get_logger().warning(f"{TAG} {what}: {model.vocabulary.warning(unknown)}")
        return f"; the model never saw: {', '.join(unknown)}"

    def _prepare_ask(self, req: Any, on_token: Callable[[str, int], None] | None) -> Prepared:
        model = self._check_active()
        question = validation.check_text(req.question, "question")
        validation.check_temperature(req.temperature)
        validation.check_seed(req.seed)
        rgb, header, cam = self._source_image(req.image, req.camera)
        n_new = int(req.max_new_tokens) or int(self._cfg.max_new_tokens)

        def run(should_cancel: Callable[[], bool]) -> Any:
            return model.ask(
                rgb,
                question,
                max_new_tokens=n_new,
                temperature=float(req.temperature),
                seed=int(req.seed),
                on_token=on_token,
                should_cancel=should_cancel,
            )

        return Prepared("ask", run, header, cam, note=self._unknown_note("ask", model, question))

    def _prepare_generate(self, req: Any, on_step: Callable[[int, int], None] | None) -> Prepared:
        model = self._check_active()
        prompt = validation.check_text(req.prompt, "prompt")
        steps, guidance = self._steps_and_guidance(req.steps, req.guidance_scale)
        validation.check_seed(req.seed)

        def run(should_cancel: Callable[[], bool]) -> Any:
            return model.generate(
                prompt,
                steps=steps,
                guidance_scale=guidance,
                seed=int(req.seed),
                on_step=on_step,
                should_cancel=should_cancel,
            )

        header = self._stamp_header()
        return Prepared("generate", run, header, note=self._unknown_note("generate", model, prompt))

    def _prepare_edit(self, req: Any, on_step: Callable[[int, int], None] | None) -> Prepared:
        model = self._check_active()
        instruction = validation.check_text(req.instruction, "instruction")
        steps, guidance = self._steps_and_guidance(req.steps, req.guidance_scale)
        validation.check_seed(req.seed)
        rgb, header, cam = self._source_image(req.image, req.camera)

        def run(should_cancel: Callable[[], bool]) -> Any:
            return model.edit(
                rgb,
                instruction,
                steps=steps,
                guidance_scale=guidance,
                seed=int(req.seed),
                on_step=on_step,
                should_cancel=should_cancel,
            )

        return Prepared("edit", run, header, cam, note=self._unknown_note("edit", model, instruction))

    def _stamp_header(self) -> Any:
        from std_msgs.msg import Header

        return Header(stamp=self.get_clock().now().to_msg(), frame_id=str(self._cfg.generated_frame_id))

    def _run(
        self,
        prepared: Prepared,
        goal_id: bytes | None = None,
        cancel_requested: Callable[[], bool] | None = None,
        progress: list[int] | None = None,
    ) -> Any:
        """Submit to the worker and wait. Raises BusyError, InvalidRequest, JobCancelled, WorkerStopped."""
        run = prepared.run

        def fn(should_cancel: Callable[[], bool]) -> Any:
            if cancel_requested is None:
                return run(should_cancel)
            return run(lambda: should_cancel() or cancel_requested())

        job = self._job_worker.submit(prepared.kind, fn)
        if goal_id is not None:
            with self._goal_lock:
                self._goal_jobs[goal_id] = (job, progress if progress is not None else [0])
            if cancel_requested is not None and cancel_requested():
                job.cancel()
        try:
            return job.result()
        finally:
            if goal_id is not None:
                with self._goal_lock:
                    self._goal_jobs.pop(goal_id, None)

    @staticmethod
    def _error_message(err: BaseException) -> str:
        if isinstance(err, (InvalidRequest, BusyError, WorkerStopped)):
            return str(err)
        if isinstance(err, JobCancelled):
            return f"cancelled: {err}"
        return f"internal error: {type(err).__name__}: {err}"

    def _log_failure(self, what: str, err: BaseException) -> None:
        if isinstance(err, (InvalidRequest, BusyError, JobCancelled, WorkerStopped)):
            self.get_logger().warning(f"{TAG} {what} refused: {self._error_message(err)}")
        else:
            self.get_logger().error(f"{TAG} {what} failed: {self._error_message(err)}")

    def _publish_image(self, image_msg: Any) -> None:
        pub = self._pub_image
        if pub is not None and self._is_active:
            pub.publish(image_msg)

    # ------------------------------------------------------------------------------- services
    def _on_ask_srv(self, req: Any, resp: Any) -> Any:
        """AskScene service: the answer about the latest (or inline) frame."""
        t0 = time.monotonic()
        try:
            prepared = self._prepare_ask(req, None)
            out = self._run(prepared)
        except Exception as err:
            self._log_failure("ask", err)
            resp.success, resp.message = False, self._error_message(err)
            resp.latency_ms = float((time.monotonic() - t0) * 1000.0)
            return resp
        return self._fill_ask(resp, prepared, out, t0)

    def _fill_ask(self, resp: Any, prepared: Prepared, out: Any, t0: float) -> Any:
        resp.answer = out.answer
        resp.image_header = prepared.header
        resp.num_tokens = int(out.num_tokens)
        resp.latency_ms = float((time.monotonic() - t0) * 1000.0)
        if out.cancelled:
            resp.success, resp.message = False, f"cancelled after {out.num_tokens} token(s)"
        else:
            resp.success, resp.message = (
                True,
                f"answered in {resp.latency_ms:.0f} ms ({out.num_tokens} tokens){prepared.note}",
            )
        return resp

    def _on_generate_srv(self, req: Any, resp: Any) -> Any:
        """GenerateImage service: an rgb8 image (512x512 for the released model), also published on
        generated_image."""
        t0 = time.monotonic()
        try:
            prepared = self._prepare_generate(req, None)
            out = self._run(prepared)
        except Exception as err:
            self._log_failure("generate_image", err)
            resp.success, resp.message = False, self._error_message(err)
            resp.latency_ms = float((time.monotonic() - t0) * 1000.0)
            return resp
        return self._fill_image(resp, prepared, out, t0)

    def _on_edit_srv(self, req: Any, resp: Any) -> Any:
        """EditImage service: the edited frame (or inline image) with the source header."""
        t0 = time.monotonic()
        try:
            prepared = self._prepare_edit(req, None)
            out = self._run(prepared)
        except Exception as err:
            self._log_failure("edit_image", err)
            resp.success, resp.message = False, self._error_message(err)
            resp.latency_ms = float((time.monotonic() - t0) * 1000.0)
            return resp
        resp = self._fill_image(resp, prepared, out, t0)
        resp.source_header = prepared.header
        return resp

    def _fill_image(
        self, resp: Any, prepared: Prepared, out: Any, t0: float, progress: list[int] | None = None
    ) -> Any:
        resp.seed = int(out.seed)
        resp.latency_ms = float((time.monotonic() - t0) * 1000.0)
        if out.cancelled or out.image is None:
            done = progress[0] if progress else 0
            resp.success, resp.message = False, f"cancelled after {done}/{out.steps} steps"
            return resp
        resp.image = images.rgb_to_image(out.image, prepared.header)
        self._publish_image(resp.image)
        resp.success = True
        resp.message = (
            f"{prepared.kind} done in {resp.latency_ms:.0f} ms ({out.steps} steps, seed {out.seed})"
            f"{prepared.note}"
        )
        return resp

    # ------------------------------------------------------------------------------- actions
    def _on_goal(self, goal_request: Any) -> GoalResponse:
        """Accept every goal: refusals are reported in the result (success=false + message)."""
        return GoalResponse.ACCEPT

    def _on_cancel(self, goal_handle: Any) -> CancelResponse:
        """Cancel: a queued job is dropped at once, a running one stops at its next step or token."""
        goal_id = bytes(goal_handle.goal_id.uuid)
        with self._goal_lock:
            job, progress = self._goal_jobs.get(goal_id, (None, [0]))
            self._cancelled_goals[goal_id] = progress[0]
        if job is not None:
            job.cancel()
        return CancelResponse.ACCEPT

    def _finish_goal(
        self,
        what: str,
        goal_handle: Any,
        result: Any,
        err: BaseException | None,
        cancelled: bool,
        progress: list[int] | None = None,
    ) -> Any:
        """Set the goal's terminal state: canceled (when the client asked), succeeded, or aborted."""
        goal_id = bytes(goal_handle.goal_id.uuid)
        if err is not None:
            self._log_failure(what, err)
            result.success, result.message = False, self._error_message(err)
            cancelled = isinstance(err, JobCancelled)
        with self._goal_lock:
            asked = goal_id in self._cancelled_goals
            at_cancel = self._cancelled_goals.pop(goal_id, 0)
        if cancelled and asked:
            done = progress[0] if progress else 0
            self.get_logger().info(
                f"{TAG} {what} cancelled: requested after {at_cancel}, stopped after {done}"
            )
            # The job can stop before rclpy moves the goal to CANCELING (that happens right after our cancel
            # callback returns, on another executor thread): wait for it, since canceled() is only legal from
            # CANCELING. On a starved CPU that thread can wait seconds; giving up sooner aborts the goal and
            # rclpy then drops it from the cancel response (the client's cancel() says False).
            deadline = time.monotonic() + 10.0
            while not goal_handle.is_cancel_requested and time.monotonic() < deadline:
                time.sleep(0.005)
        try:
            if cancelled and goal_handle.is_cancel_requested:
                goal_handle.canceled()
            elif result.success:
                goal_handle.succeed()
            else:
                goal_handle.abort()
        except Exception as exc:
            self.get_logger().warning(f"{TAG} {what}: cannot set the goal state ({exc}); aborting")
            if goal_handle.is_active:
                goal_handle.abort()
        return result

    def _publish_feedback(self, goal_handle: Any, feedback: Any) -> None:
        """Publish a goal's feedback; dropped once the context is down (SIGINT/SIGTERM while the job runs:
        the action server's publisher is gone, and the exit path cancels the job)."""
        try:
            goal_handle.publish_feedback(feedback)
        except Exception:
            if self.context.ok():
                raise

    def _execute_ask(self, goal_handle: Any) -> Any:
        """AskScene action: token feedback (the text so far), cancel between tokens."""
        t0 = time.monotonic()
        result = AskSceneAction.Result()
        goal_id = bytes(goal_handle.goal_id.uuid)
        progress, last_feedback = [0], [0.0]

        def on_token(text: str, n: int) -> None:
            progress[0] = n
            self._publish_feedback(goal_handle, AskSceneAction.Feedback(text=text, num_tokens=n))
            last_feedback[0] = time.monotonic()

        try:
            prepared = self._prepare_ask(goal_handle.request, on_token)
            out = self._run(prepared, goal_id, lambda: goal_handle.is_cancel_requested, progress)
        except Exception as err:
            return self._finish_goal("ask goal", goal_handle, result, err, False)
        self._fill_ask(result, prepared, out, t0)
        _let_feedback_arrive(last_feedback[0])
        return self._finish_goal("ask goal", goal_handle, result, None, out.cancelled, progress)

    def _execute_image(
        self, what: str, goal_handle: Any, action: Any, prepare: Callable[..., Prepared]
    ) -> Any:
        t0 = time.monotonic()
        result = action.Result()
        goal_id = bytes(goal_handle.goal_id.uuid)
        progress, last_feedback = [0], [0.0]

        def on_step(step: int, total: int) -> None:
            progress[0] = step
            self._publish_feedback(goal_handle, action.Feedback(step=step, total=total))
            last_feedback[0] = time.monotonic()

        try:
            prepared = prepare(goal_handle.request, on_step)
            out = self._run(prepared, goal_id, lambda: goal_handle.is_cancel_requested, progress)
        except Exception as err:
            return self._finish_goal(what, goal_handle, result, err, False)
        self._fill_image(result, prepared, out, t0, progress)
        if hasattr(result, "source_header"):
            result.source_header = prepared.header
        _let_feedback_arrive(last_feedback[0])
        return self._finish_goal(what, goal_handle, result, None, out.cancelled, progress)

    def _execute_generate(self, goal_handle: Any) -> Any:
        """GenerateImage action: (step, total) feedback per denoising step, cancel between steps."""
        return self._execute_image(
            "generate_image goal", goal_handle, GenerateImageAction, self._prepare_generate
        )

    def _execute_edit(self, goal_handle: Any) -> Any:
        """EditImage action: (step, total) feedback per denoising step, cancel between steps."""
        return self._execute_image("edit_image goal", goal_handle, EditImageAction, self._prepare_edit)

    # ================================================================================ continuous mode
    def _start_continuous(self) -> None:
        question = str(self._cfg.continuous_question).strip()
        if not question:
            return
        camera = self._resolve_camera(str(self._cfg.continuous_camera))
        period = 1.0 / float(self._cfg.continuous_rate_hz)
        tick = self._on_continuous_tick
        self._timer_continuous = self.create_timer(period, tick, callback_group=self._cbg)
        self._continuous_kick = self.create_guard_condition(tick, callback_group=self._cbg)
        self._continuous_deferred = False
        self.get_logger().info(
            f"{TAG} Continuous question {question!r} on {camera} at "
            f"{self._cfg.continuous_rate_hz:g} Hz -> {self._pub_answer.topic_name}"
        )

    def _stop_continuous(self) -> None:
        if self._timer_continuous is not None:
            self.destroy_timer(self._timer_continuous)
            self._timer_continuous = None
        if self._continuous_kick is not None:
            self.destroy_guard_condition(self._continuous_kick)
            self._continuous_kick = None
        self._continuous_deferred = False
        job = self._continuous_job
        if job is not None:
            job.cancel()

    def _on_continuous_tick(self) -> None:
        """Ask the continuous question about the latest frame; while the last one still runs, the tick is
        deferred to its end (one at most), so that a slow answer delays the next instead of skipping it."""
        if not self._continuous_lock.acquire(blocking=False):
            return  # the timer and a deferred tick at once: one asks
        try:
            self._continuous_tick()
        finally:
            self._continuous_lock.release()

    def _continuous_tick(self) -> None:
        if not self._is_active:
            return
        # The flag goes up before the check: a job that ends between the two then sees it and kicks.
        self._continuous_deferred = True
        if self._continuous_job is not None and not self._continuous_job.future.done():
            return
        self._continuous_deferred = False
        question = str(self._cfg.continuous_question).strip()
        model = self._model
        if not question or model is None:
            return
        try:
            rgb, header, cam = self._latest_frame(str(self._cfg.continuous_camera))
        except InvalidRequest as err:
            self.get_logger().warning(f"{TAG} continuous question skipped: {err}", throttle_duration_sec=5.0)
            return
        unknown = model.unknown_words(question)
        if unknown:
            self.get_logger().warning(
                f"{TAG} continuous question: {model.vocabulary.warning(unknown)}", throttle_duration_sec=60.0
            )
        n_new = int(self._cfg.max_new_tokens)
        t0 = time.monotonic()
        try:
            job = self._job_worker.submit(
                "continuous",
                lambda should_cancel: model.ask(
                    rgb, question, max_new_tokens=n_new, should_cancel=should_cancel
                ),
                background=True,
            )
        except (BusyError, WorkerStopped):
            return  # a request is running or queued: requests come first
        self._continuous_job = job
        job.future.add_done_callback(lambda fut: self._on_continuous_done(fut, header, cam, question, t0))

    def _on_continuous_done(self, fut: Any, header: Any, camera: str, question: str, t0: float) -> None:
        """Publish the answer (worker thread); run a deferred tick now, on the executor."""
        self._publish_answer(fut, header, camera, question, t0)
        kick = self._continuous_kick
        if self._continuous_deferred and kick is not None:
            kick.trigger()

    def _publish_answer(self, fut: Any, header: Any, camera: str, question: str, t0: float) -> None:
        if fut.cancelled() or fut.exception() is not None:
            err = None if fut.cancelled() else fut.exception()
            if err is not None and not isinstance(err, (JobCancelled, WorkerStopped)):
                self.get_logger().warning(f"{TAG} continuous question failed: {self._error_message(err)}")
            return
        out = fut.result()
        pub = self._pub_answer
        if out.cancelled or pub is None or not self._is_active:
            return
        msg = SceneAnswer(
            header=header,
            camera=camera,
            question=question,
            answer=out.answer,
            latency_ms=float((time.monotonic() - t0) * 1000.0),
        )
        pub.publish(msg)

    # ================================================================================ diagnostics
    def _publish_diagnostics(self) -> None:
        """One DiagnosticStatus: state, backend, model, queue, last latencies, frame ages, RSS."""
        stats = self._job_worker.stats()
        values: dict[str, str] = {
            "state": self._state_label,
            "backend": str(self._cfg.backend),
            "model": str(self._model_info.get("model", "")),
            "model_dir": str(self._cfg.model_dir),
            "busy_policy": stats.policy,
            "max_queue": str(stats.max_queue),
            "queue_depth": str(stats.queued),
            "running": stats.running or "",
            "accepted": str(stats.accepted),
            "rejected_busy": str(stats.rejected),
            "completed": str(stats.completed),
            "failed": str(stats.failed),
            "cancelled": str(stats.cancelled),
        }
        for kind in ("ask", "generate", "edit", "continuous"):
            latency = stats.last_latency_s.get(kind)
            values[f"last_latency_ms.{kind}"] = "" if latency is None else f"{latency * 1000.0:.1f}"
        now = time.monotonic()
        stale: list[str] = []
        with self._frame_lock:
            cache = dict(self._frame_cache)
        for cam in self._cfg.camera_topics:
            frame = cache.get(cam)
            age = None if frame is None else now - frame.received
            values[f"frame_age_s.{cam}"] = "" if age is None else f"{age:.3f}"
            values[f"frames_received.{cam}"] = "0" if frame is None else str(frame.count)
            max_age = float(self._cfg.max_frame_age_s)
            if self._is_active and (age is None or (max_age > 0 and age > max_age)):
                stale.append(cam)
        try:
            import psutil

            values["rss_mb"] = f"{psutil.Process().memory_info().rss / 2**20:.1f}"
        except Exception:
            values["rss_mb"] = ""
        status = DiagnosticStatus(
            name=f"mobile_o: {self.get_fully_qualified_name()}",
            hardware_id=f"{self._cfg.backend}:{values['model']}",
        )
        if self._last_error:
            status.level, status.message = DiagnosticStatus.ERROR, self._last_error
        elif not self._is_active:
            status.level, status.message = DiagnosticStatus.WARN, f"not active ({self._state_label})"
        elif stale:
            status.level, status.message = DiagnosticStatus.WARN, f"no recent frame from {', '.join(stale)}"
        else:
            status.level = DiagnosticStatus.OK
            status.message = f"active; {'busy' if stats.running else 'idle'}, {stats.queued} queued"
        status.values = [KeyValue(key=k, value=v) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        with contextlib.suppress(Exception):  # e.g. during shutdown
            self._pub_diag.publish(msg)
