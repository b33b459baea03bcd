"""Request validation (torch-free): each check raises :class:`InvalidRequest` with a one-line reason.

The pipelines (:class:`~mobile_o_ros.results.Pipeline`) are the boundary: each ``ask`` calls
:func:`check_ask` once and each ``generate`` or ``edit`` :func:`check_image_request` once, which fill in the
model's defaults and check every value. Callers check only what a pipeline cannot know (a node's limits,
a camera, a file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mobile_o_ros.model_config import Defaults


class InvalidRequest(ValueError):
    """A request that cannot be served as given; ``str(err)`` is the reason to show the user."""


def check_text(text: str, what: str) -> str:
    """Reject empty or whitespace-only text; return it stripped of surrounding whitespace."""
    if text is None or not str(text).strip():
        raise InvalidRequest(f"empty {what}")
    return str(text).strip()


def check_steps(steps: int, max_steps: int | None = None) -> int:
    """Denoising steps must be an integer in [1, max_steps]."""
    if isinstance(steps, float) and not steps.is_integer():
        raise InvalidRequest(f"steps must be an integer, got {steps}")
    steps = int(steps)
    if steps < 1:
        raise InvalidRequest(f"steps must be >= 1, got {steps}")
    if max_steps is not None and steps > max_steps:
        raise InvalidRequest(f"steps {steps} exceeds max_steps {max_steps}")
    return steps


def check_guidance(guidance_scale: float) -> float:
    """Guidance must be finite and non-negative (1.0 disables CFG's extrapolation)."""
    g = float(guidance_scale)
    if not math.isfinite(g):
        raise InvalidRequest(f"guidance_scale must be finite, got {guidance_scale}")
    if g < 0:
        raise InvalidRequest(f"guidance_scale must be >= 0, got {guidance_scale}")
    return g


def check_temperature(temperature: float) -> float:
    """Temperature must be finite and >= 0 (0 = greedy)."""
    t = float(temperature)
    if not math.isfinite(t) or t < 0:
        raise InvalidRequest(f"temperature must be a finite number >= 0, got {temperature}")
    return t


def check_top_p(top_p: float) -> float:
    """top_p in (0, 1]."""
    p = float(top_p)
    if not math.isfinite(p) or p <= 0 or p > 1:
        raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}")
    return p


def check_max_new_tokens(n: int, limit: int | None = None) -> int:
    """At least one new token, at most ``limit``."""
    n = int(n)
    if n < 1:
        raise InvalidRequest(f"max_new_tokens must be >= 1, got {n}")
    if limit is not None and n > limit:
        raise InvalidRequest(f"max_new_tokens {n} exceeds the limit {limit}")
    return n


def check_seed(seed: int | None) -> int | None:
    """None or -1 mean random; otherwise a non-negative integer below 2**63."""
    if seed is None or int(seed) == -1:
        return None
    s = int(seed)
    if s < 0 or s >= 2**63:
        raise InvalidRequest(f"seed must be -1 (random) or in [0, 2**63), got {seed}")
    return s


def check_top_k(top_k: int) -> int:
    """top_k >= 0 (0 = off)."""
    k = int(top_k)
    if k < 0:
        raise InvalidRequest(f"top_k must be >= 0 (0 = off), got {top_k}")
    return k


@dataclass(frozen=True)
class AskRequest:
    """A checked question request; ``seed`` None means random."""

    question: str
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None


@dataclass(frozen=True)
class ImageRequest:
    """A checked generation or editing request; ``text`` is the prompt or instruction."""

    text: str
    steps: int
    guidance_scale: float
    seed: int | None


def check_ask(
    question: str,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float,
    top_k: int,
    seed: int | None,
    defaults: Defaults,
) -> AskRequest:
    """Check a question request; ``max_new_tokens`` None or 0 and ``temperature`` None are the model's
    defaults."""
    return AskRequest(
        question=check_text(question, "question"),
        max_new_tokens=check_max_new_tokens(max_new_tokens or defaults.max_new_tokens),
        temperature=check_temperature(defaults.temperature if temperature is None else temperature),
        top_p=check_top_p(top_p),
        top_k=check_top_k(top_k),
        seed=check_seed(seed),
    )


def check_image_request(
    text: str,
    what: str,
    steps: int | None,
    guidance_scale: float | None,
    seed: int | None,
    defaults: Defaults,
) -> ImageRequest:
    """Check a generation (``what`` = "prompt") or editing ("instruction") request; ``steps`` and
    ``guidance_scale`` None are the model's defaults."""
    return ImageRequest(
        text=check_text(text, what),
        steps=check_steps(defaults.steps if steps is None else steps),
        guidance_scale=check_guidance(defaults.guidance_scale if guidance_scale is None else guidance_scale),
        seed=check_seed(seed),
    )
