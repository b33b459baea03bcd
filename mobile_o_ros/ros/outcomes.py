"""How a request ended, as the ``status`` of every service response and action result (no rclpy needed).

:class:`Status` mirrors the uint8 constants of ``srv/*.srv`` and ``action/*.action`` (``OK`` … ``FAILED``);
:func:`status_of` maps an exception to one, and :func:`message_of` words it for ``message``. The fill
functions write a result message: ``success`` is true exactly when ``status`` is OK.
"""

from __future__ import annotations

import enum
import time
from typing import Any

from mobile_o_ros.ros.worker import BusyError, JobCancelled, WorkerStopped
from mobile_o_ros.validation import InvalidRequest


class NamedIntEnum(enum.IntEnum):
    """An IntEnum that prints, formats and reprs as its name."""

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return self.name

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)


class Status(NamedIntEnum):
    """The ``status`` constants of every result, printed by name (``Status.BUSY == 1``)."""

    OK = 0
    BUSY = 1
    NOT_ACTIVE = 2
    INVALID = 3
    CANCELLED = 4
    FAILED = 5


class NotActive(InvalidRequest):
    """A request reached a node that is not active."""


#: Exceptions that refuse a request (logged as warnings); any other is a failure (logged as an error).
REFUSALS = (InvalidRequest, BusyError, JobCancelled, WorkerStopped)


def status_of(err: BaseException) -> Status:
    """The status of a request that raised ``err``."""
    if isinstance(err, (NotActive, WorkerStopped)):
        return Status.NOT_ACTIVE  # WorkerStopped: the node cleaned up or shut down before the job ran
    if isinstance(err, BusyError):
        return Status.BUSY
    if isinstance(err, InvalidRequest):
        return Status.INVALID
    if isinstance(err, JobCancelled):
        return Status.CANCELLED
    return Status.FAILED


def message_of(err: BaseException) -> str:
    """The one-line ``message`` of a request that raised ``err``."""
    if isinstance(err, (InvalidRequest, BusyError, WorkerStopped)):
        return str(err)
    if isinstance(err, JobCancelled):
        return f"cancelled: {err}"
    return f"internal error: {type(err).__name__}: {err}"


def _latency_ms(t0: float) -> float:
    return float((time.monotonic() - t0) * 1000.0)


def fill_refused(result: Any, err: BaseException, t0: float) -> Any:
    """A request that raised ``err``: ``success`` false, its status and message, the latency so far."""
    result.success, result.message, result.status = False, message_of(err), int(status_of(err))
    result.latency_ms = _latency_ms(t0)
    return result


def fill_answer(
    result: Any,
    out: Any,
    header: Any,
    t0: float,
    note: str = "",
    first_token: float = 0.0,
    warm_frame: bool = False,
) -> Any:
    """An AskScene response or result from the model's answer ``out`` (answer, num_tokens, cancelled).

    ``first_token``: ``time.monotonic()`` of the first answer token (0: none came; an answer that ended at
    its first token then counts its whole latency, a cancelled one 0); ``warm_frame``: the answer started
    from the camera's warm frame.
    """
    result.answer = out.answer
    result.image_header = header
    result.num_tokens = int(out.num_tokens)
    result.latency_ms = _latency_ms(t0)
    if first_token:
        result.time_to_first_token_ms = float((first_token - t0) * 1000.0)
    else:
        result.time_to_first_token_ms = 0.0 if out.cancelled else result.latency_ms
    result.warm_frame = bool(warm_frame)
    if out.cancelled:
        result.success, result.status = False, int(Status.CANCELLED)
        result.message = f"cancelled after {out.num_tokens} token(s)"
    else:
        result.success, result.status = True, int(Status.OK)
        result.message = f"answered in {result.latency_ms:.0f} ms ({out.num_tokens} tokens){note}"
    return result


def fill_image(
    result: Any, out: Any, image_msg: Any, kind: str, steps_done: int, t0: float, note: str = ""
) -> Any:
    """A GenerateImage/EditImage response or result from the model's ``out`` (image, seed, steps, cancelled).

    ``image_msg``: the rgb8 ``sensor_msgs/Image`` of ``out.image`` (None when cancelled); ``steps_done``:
    the denoising steps completed.
    """
    result.seed = int(out.seed)
    result.latency_ms = _latency_ms(t0)
    if out.cancelled or image_msg is None:
        result.success, result.status, result.steps_done = False, int(Status.CANCELLED), int(steps_done)
        result.message = f"cancelled after {steps_done}/{out.steps} steps"
        return result
    result.image = image_msg
    result.success, result.status, result.steps_done = True, int(Status.OK), int(out.steps)
    result.message = f"{kind} done in {result.latency_ms:.0f} ms ({out.steps} steps, seed {out.seed}){note}"
    return result
