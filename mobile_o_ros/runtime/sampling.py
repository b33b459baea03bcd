"""Seeded randomness on the host: the initial noise of a seed, and next-token selection.

:func:`initial_latents` is the one definition of "the noise for seed S" that every backend uses (the torch
reference, onnxruntime, TensorRT), so a seed gives the same image on each.

Next-token selection follows HF ``generate``: greedy when the temperature is 0; otherwise, in HF's order,
``TemperatureLogitsWarper``, then ``TopKLogitsWarper``, then ``TopPLogitsWarper`` (each with
``min_tokens_to_keep=1``), then a float64 softmax and a draw from a seeded ``numpy.random.Generator``.
"""

from __future__ import annotations

import secrets

import numpy as np

#: Seeds drawn for "random" requests lie in [0, 2**31) so they fit any integer field.
_RANDOM_SEED_BITS = 31


def make_rng(seed: int | None) -> tuple[np.random.Generator, int]:
    """Generator for one request; ``None`` or ``-1`` draws a fresh seed. Returns ``(rng, used_seed)``."""
    if seed is None or int(seed) == -1:
        seed = secrets.randbits(_RANDOM_SEED_BITS)
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be -1 (random) or non-negative, got {seed}")
    return np.random.default_rng(seed), seed


def initial_latents(seed: int, latent_shape: tuple[int, ...]) -> np.ndarray:
    """The initial noise of ``seed``: standard normal [1, *latent_shape] float32 from
    ``numpy.random.default_rng(seed)``, the same on every backend."""
    seed = int(seed)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    return np.random.default_rng(seed).standard_normal((1, *latent_shape), dtype=np.float32)


def _check(temperature: float, top_p: float, top_k: int) -> None:
    if not np.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0.0 <= top_p <= 1.0:
        raise ValueError(f"top_p must be in [0, 1], got {top_p}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")


def _top_p_keep(scores: np.ndarray, candidates: np.ndarray, top_p: float) -> np.ndarray:
    """Indices (within ``candidates``) HF's ``TopPLogitsWarper`` keeps.

    HF sorts ascending and drops tokens whose cumulative probability is <= 1 - top_p; equivalently, in
    descending order, a token is kept while the mass strictly before it is < top_p (the first always is).
    Only a growing top slice is sorted, so this stays cheap on a 150k vocabulary.
    """
    values = scores[candidates]
    probs = np.exp(values - values.max())
    probs /= probs.sum()
    n = len(candidates)
    m = min(n, 64)
    while True:
        top = np.argpartition(-probs, m - 1)[:m] if m < n else np.arange(n)
        top = top[np.argsort(-probs[top], kind="stable")]
        before = np.cumsum(probs[top]) - probs[top]
        keep = before < top_p
        keep[0] = True
        if not keep[-1] or m == n:
            return top[keep]
        m = min(n, m * 4)


def filter_logits(
    logits: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> np.ndarray:
    """Warped float64 scores with removed tokens at ``-inf`` (HF temperature -> top-k -> top-p)."""
    _check(temperature, top_p, top_k)
    scores = np.asarray(logits, dtype=np.float64).reshape(-1)
    if temperature not in (0.0, 1.0):
        scores = scores / temperature
    keep = np.arange(scores.size)
    if 0 < top_k < scores.size:
        kth = np.partition(scores, scores.size - top_k)[scores.size - top_k]
        keep = np.flatnonzero(scores >= kth)  # ties with the k-th value are kept, as in HF
    if top_p < 1.0:
        keep = keep[_top_p_keep(scores, keep, top_p)]
    out = np.full_like(scores, -np.inf)
    out[keep] = scores[keep]
    return out


def sample_next_token(
    logits: np.ndarray,
    temperature: float,
    top_p: float = 1.0,
    top_k: int = 0,
    rng: np.random.Generator | None = None,
) -> int:
    """Next token id from ``logits`` [V]: argmax when ``temperature == 0``, else HF-style sampling."""
    _check(temperature, top_p, top_k)
    logits = np.asarray(logits).reshape(-1)
    if logits.size == 0:
        raise ValueError("empty logits")
    if temperature == 0:
        return int(np.argmax(logits))  # first maximal index, like torch.argmax
    scores = filter_logits(logits, temperature, top_k, top_p)
    keep = np.flatnonzero(np.isfinite(scores))
    probs = np.exp(scores[keep] - scores[keep].max())
    cdf = np.cumsum(probs)
    rng = rng if rng is not None else np.random.default_rng()
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return int(keep[min(index, len(keep) - 1)])
