"""Request validation shared by the CLI, the runtime and the ROS nodes (torch-free).

Each check raises :class:`InvalidRequest` with a one-line, specific reason.
"""

from __future__ import annotations

import math


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
