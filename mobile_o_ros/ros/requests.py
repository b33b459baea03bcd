"""Service and action requests → validated worker jobs, and the three services' callbacks.

A request is checked here (node active, text, steps, guidance, seed, source image), its defaults are
filled in (the request's value, else the node's parameter, else the model's manifest), and it becomes a
:class:`Prepared` job that :meth:`Requests.run` submits to the worker and waits for. The same preparation
serves the services (here) and the actions (:mod:`mobile_o_ros.ros.goals`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mobile_o_ros import validation
from mobile_o_ros.ros import images, outcomes
from mobile_o_ros.ros.frames import Cameras
from mobile_o_ros.ros.state import TAG, NodeState
from mobile_o_ros.ros.warm import WarmFrames
from mobile_o_ros.ros.worker import Job, Worker

#: The three kinds of request: the worker's job kind, the service (and action) name.
KINDS = {"ask": "ask", "generate": "generate_image", "edit": "edit_image"}


#: Publishes one feedback: (text so far, tokens) for ask, (step, total) for generate and edit.
Feedback = Callable[[Any, int], None]


@dataclass
class Progress:
    """How far one request got: steps or tokens done, and when its last feedback was published.

    :meth:`on_token` and :meth:`on_step` are the model's callbacks; each also publishes ``feedback`` (an
    action goal's) when set.
    """

    feedback: Feedback | None = None
    done: int = 0
    #: ``time.monotonic()`` of the last feedback; 0 when none was published.
    last_feedback: float = 0.0
    #: ``time.monotonic()`` of the first answer token; 0 until there is one.
    first_token: float = 0.0
    #: True when the answer started from the camera's warm frame (:mod:`mobile_o_ros.ros.warm`).
    warm_frame: bool = False

    def on_token(self, text: str, num_tokens: int) -> None:
        """One more answer token: ``text`` is the answer so far."""
        if not self.first_token:
            self.first_token = time.monotonic()
        self._advance(num_tokens, text, num_tokens)

    def on_step(self, step: int, total: int) -> None:
        """One more denoising step of ``total``."""
        self._advance(step, step, total)

    def _advance(self, done: int, *feedback: Any) -> None:
        self.done = int(done)
        if self.feedback is not None:
            self.feedback(*feedback)
            self.last_feedback = time.monotonic()


@dataclass
class Prepared:
    """A validated request, ready for the worker."""

    kind: str
    run: Callable[[Callable[[], bool]], Any]
    header: Any = None
    camera: str = ""
    #: Appended to a successful response's message (words of the request the model never saw).
    note: str = ""


def model_default(model: Any, key: str) -> Any:
    """The model's default ``key`` (steps, guidance_scale, max_new_tokens): its ``defaults``, read from the
    export's manifest."""
    return getattr(model.defaults, key)


class Requests:
    """Prepares requests for the worker; answers the ``ask``, ``generate_image``, ``edit_image`` services."""

    def __init__(
        self, node: Any, state: NodeState, worker: Worker, cameras: Cameras, warm: WarmFrames | None = None
    ) -> None:
        self._node = node
        self._state = state
        self._worker = worker
        self._cameras = cameras
        self._warm = warm

    # ------------------------------------------------------------------------------ preparation
    def check_active(self) -> Any:
        """The model, or :class:`~mobile_o_ros.ros.outcomes.NotActive` when the node is not active."""
        model = self._state.model
        if not self._state.active or model is None:
            raise outcomes.NotActive(
                f"not active: the node is {self._state.label}; activate it "
                f"(ros2 lifecycle set {self._state.name} activate)"
            )
        return model

    def steps_and_guidance(self, model: Any, steps: int, guidance: float) -> tuple[int, float]:
        """A request's steps and guidance, 0 filled in from the parameters, then from the model."""
        cfg = self._state.cfg
        g = float(guidance)
        if math.isfinite(g) and g == 0.0:
            g = float(cfg.default_guidance_scale) or float(model_default(model, "guidance_scale"))
        n = int(steps) or int(cfg.default_steps) or int(model_default(model, "steps"))
        return validation.check_steps(n, int(cfg.max_steps)), validation.check_guidance(g)

    def max_new_tokens(self, model: Any, asked: int) -> int:
        """A request's answer length, 0 filled in from the parameter, then from the model."""
        return (
            int(asked) or int(self._state.cfg.max_new_tokens) or int(model_default(model, "max_new_tokens"))
        )

    def unknown_note(self, what: str, model: Any, text: str) -> str:
        """Log a warning naming the words of ``text`` the model never saw; the note for the response."""
        unknown = model.unknown_words(text)
        if not unknown:
            return ""
        self._node.get_logger().warning(f"{TAG} {what}: {model.vocabulary.warning(unknown)}")
        return f"; the model never saw: {', '.join(unknown)}"

    def prepare(self, kind: str, req: Any, progress: Progress) -> Prepared:
        """Validate a request of ``kind`` (ask, generate, edit) into a job that updates ``progress``."""
        prepare = {"ask": self._prepare_ask, "generate": self._prepare_generate, "edit": self._prepare_edit}
        return prepare[kind](req, progress)

    def _prepare_ask(self, req: Any, progress: Progress) -> Prepared:
        model = self.check_active()
        question = validation.check_text(req.question, "question")
        validation.check_temperature(req.temperature)
        validation.check_seed(req.seed)
        n_new = self.max_new_tokens(model, req.max_new_tokens)
        warm = self._warm
        if warm is not None and warm.enabled and images.is_empty_image(req.image):
            return self._prepare_warm_ask(model, warm, req, question, n_new, progress)
        rgb, header, cam = self._cameras.source_image(req.image, req.camera)

        def run(should_cancel: Callable[[], bool]) -> Any:
            return model.ask(
                rgb,
                question,
                max_new_tokens=n_new,
                temperature=float(req.temperature),
                seed=int(req.seed),
                on_token=progress.on_token,
                should_cancel=should_cancel,
            )

        return Prepared("ask", run, header, cam, note=self.unknown_note("ask", model, question))

    def _prepare_warm_ask(
        self, model: Any, warm: WarmFrames, req: Any, question: str, n_new: int, progress: Progress
    ) -> Prepared:
        """A question about a camera's latest frame while warming is on: from its warm frame when it is
        that frame, else seen now and kept warm. A frame that is not warm is decoded here, so an
        undecodable one is refused before it queues."""
        frame, cam = self._cameras.latest_frame(req.camera)
        rgb = warm.pixels_unless_warm(cam, frame)

        def run(should_cancel: Callable[[], bool]) -> Any:
            out, progress.warm_frame = warm.ask(
                model,
                cam,
                frame,
                rgb,
                question,
                max_new_tokens=n_new,
                temperature=float(req.temperature),
                seed=int(req.seed),
                on_token=progress.on_token,
                should_cancel=should_cancel,
            )
            return out

        return Prepared("ask", run, frame.msg.header, cam, note=self.unknown_note("ask", model, question))

    def _prepare_generate(self, req: Any, progress: Progress) -> Prepared:
        model = self.check_active()
        prompt = validation.check_text(req.prompt, "prompt")
        steps, guidance = self.steps_and_guidance(model, req.steps, req.guidance_scale)
        validation.check_seed(req.seed)

        def run(should_cancel: Callable[[], bool]) -> Any:
            return model.generate(
                prompt,
                steps=steps,
                guidance_scale=guidance,
                seed=int(req.seed),
                on_step=progress.on_step,
                should_cancel=should_cancel,
            )

        header = self._stamp_header()
        return Prepared("generate", run, header, note=self.unknown_note("generate", model, prompt))

    def _prepare_edit(self, req: Any, progress: Progress) -> Prepared:
        model = self.check_active()
        instruction = validation.check_text(req.instruction, "instruction")
        steps, guidance = self.steps_and_guidance(model, req.steps, req.guidance_scale)
        validation.check_seed(req.seed)
        rgb, header, cam = self._cameras.source_image(req.image, req.camera)

        def run(should_cancel: Callable[[], bool]) -> Any:
            return model.edit(
                rgb,
                instruction,
                steps=steps,
                guidance_scale=guidance,
                seed=int(req.seed),
                on_step=progress.on_step,
                should_cancel=should_cancel,
            )

        return Prepared("edit", run, header, cam, note=self.unknown_note("edit", model, instruction))

    def _stamp_header(self) -> Any:
        from std_msgs.msg import Header

        return Header(
            stamp=self._node.get_clock().now().to_msg(), frame_id=str(self._state.cfg.generated_frame_id)
        )

    # ------------------------------------------------------------------------------ running
    def run(
        self,
        prepared: Prepared,
        cancel_requested: Callable[[], bool] | None = None,
        on_submit: Callable[[Job], None] | None = None,
    ) -> Any:
        """Submit to the worker and wait for the model's output.

        ``cancel_requested``: polled with the job's own cancel flag between steps or tokens; ``on_submit``
        receives the job once it is queued (a goal's cancel needs it). Raises BusyError, InvalidRequest,
        JobCancelled, WorkerStopped, or what the model raised.
        """
        run = prepared.run

        def fn(should_cancel: Callable[[], bool]) -> Any:
            if cancel_requested is None:
                return run(should_cancel)
            return run(lambda: should_cancel() or cancel_requested())

        job = self._worker.submit(prepared.kind, fn)
        if on_submit is not None:
            on_submit(job)
        return job.result()

    def fill(self, result: Any, prepared: Prepared, out: Any, t0: float, progress: Progress) -> Any:
        """Write the model's output into a response or action result (images are also published)."""
        if prepared.kind == "ask":
            return outcomes.fill_answer(
                result, out, prepared.header, t0, prepared.note, progress.first_token, progress.warm_frame
            )
        image_msg = None
        if not out.cancelled and out.image is not None:
            image_msg = images.rgb_to_image(out.image, prepared.header)
            self._state.publish_image(image_msg)
        outcomes.fill_image(result, out, image_msg, prepared.kind, progress.done, t0, prepared.note)
        if hasattr(result, "source_header"):
            result.source_header = prepared.header
        return result

    def refuse(self, what: str, result: Any, err: BaseException, t0: float) -> Any:
        """Log why a request failed and write it into the response or action result."""
        log = self._node.get_logger()
        if isinstance(err, outcomes.REFUSALS):
            log.warning(f"{TAG} {what} refused: {outcomes.message_of(err)}")
        else:
            log.error(f"{TAG} {what} failed: {outcomes.message_of(err)}")
        return outcomes.fill_refused(result, err, t0)

    # ------------------------------------------------------------------------------ services
    def serve(self, kind: str, req: Any, resp: Any) -> Any:
        """Answer one service request of ``kind`` (ask, generate, edit)."""
        t0 = time.monotonic()
        progress = Progress()
        try:
            prepared = self.prepare(kind, req, progress)
            out = self.run(prepared)
        except Exception as err:
            return self.refuse(KINDS[kind], resp, err, t0)
        return self.fill(resp, prepared, out, t0, progress)

    def on_ask(self, req: Any, resp: Any) -> Any:
        """AskScene service: the answer about the latest (or inline) frame."""
        return self.serve("ask", req, resp)

    def on_generate(self, req: Any, resp: Any) -> Any:
        """GenerateImage service: an rgb8 image (512x512 for the released model), also published on
        generated_image."""
        return self.serve("generate", req, resp)

    def on_edit(self, req: Any, resp: Any) -> Any:
        """EditImage service: the edited frame (or inline image) with the source header."""
        return self.serve("edit", req, resp)
