"""Host token sampling against HF's logits warpers and torch.argmax."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_o_ros.runtime.sampling import filter_logits, make_rng, sample_next_token

# The tests marked torch compare with torch / transformers; the others need neither.
pytestmark = pytest.mark.runtime


def _hf_kept(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> set[int]:
    """Token ids HF ``generate`` keeps (processors added exactly when ``_get_logits_processor`` adds them)."""
    import torch
    from transformers.generation import logits_process

    procs = logits_process.LogitsProcessorList()
    if temperature != 1.0:
        procs.append(logits_process.TemperatureLogitsWarper(temperature))
    if top_k != 0:
        procs.append(logits_process.TopKLogitsWarper(top_k=top_k, min_tokens_to_keep=1))
    if top_p < 1.0:
        procs.append(logits_process.TopPLogitsWarper(top_p=top_p, min_tokens_to_keep=1))
    scores = procs(None, torch.from_numpy(logits)[None])[0].numpy()
    return set(np.flatnonzero(np.isfinite(scores)).tolist())


@pytest.mark.torch
def test_greedy_is_torch_argmax() -> None:
    import torch

    rng = np.random.default_rng(0)
    for _ in range(50):
        logits = rng.standard_normal(int(rng.integers(1, 5000))).astype(np.float32)
        assert sample_next_token(logits, 0.0) == int(torch.argmax(torch.from_numpy(logits)))
    ties = np.array([0.0, 3.0, 1.0, 3.0, 3.0], np.float32)
    assert sample_next_token(ties, 0.0) == int(torch.argmax(torch.from_numpy(ties))) == 1


@pytest.mark.torch
def test_kept_set_matches_hf_warpers() -> None:
    rng = np.random.default_rng(1)
    for _ in range(400):
        vocab = int(rng.integers(2, 4000))
        logits = (rng.standard_normal(vocab) * rng.uniform(0.1, 8.0)).astype(np.float32)
        temperature = float(rng.choice([0.3, 0.6, 0.8, 1.0, 1.7]))
        top_k = int(rng.choice([0, 0, 1, 5, 50, vocab + 7]))
        top_p = float(rng.choice([1.0, 0.95, 0.9, 0.5, 0.1, 0.0]))
        ours = set(np.flatnonzero(np.isfinite(filter_logits(logits, temperature, top_k, top_p))).tolist())
        assert ours == _hf_kept(logits, temperature, top_k, top_p), (vocab, temperature, top_k, top_p)


@pytest.mark.torch
def test_large_vocab_top_p_matches_hf() -> None:
    logits = (np.random.default_rng(2).standard_normal(151649) * 4).astype(np.float32)
    for top_p in (0.5, 0.9, 0.99):
        ours = set(np.flatnonzero(np.isfinite(filter_logits(logits, 0.8, 0, top_p))).tolist())
        assert ours == _hf_kept(logits, 0.8, 0, top_p)


@pytest.mark.torch
def test_samples_stay_in_kept_set() -> None:
    logits = np.random.default_rng(3).standard_normal(500).astype(np.float32) * 3
    kept = _hf_kept(logits, 0.8, 20, 0.9)
    rng, _ = make_rng(5)
    drawn = {sample_next_token(logits, 0.8, top_p=0.9, top_k=20, rng=rng) for _ in range(300)}
    assert drawn <= kept and len(drawn) > 1
    assert {sample_next_token(logits, 0.8, top_p=0.0, rng=rng) for _ in range(20)} == {int(np.argmax(logits))}
    assert {sample_next_token(logits, 0.8, top_k=1, rng=rng) for _ in range(20)} == {int(np.argmax(logits))}


def test_same_seed_same_tokens() -> None:
    logits = np.random.default_rng(4).standard_normal(1000).astype(np.float32)

    def draw(seed: int) -> list[int]:
        rng, used = make_rng(seed)
        assert used == seed
        return [sample_next_token(logits, 1.0, 0.95, 0, rng) for _ in range(64)]

    assert draw(123) == draw(123)
    assert draw(123) != draw(124)


def test_random_seed_is_reported_and_reproducible() -> None:
    for seed in (None, -1):
        rng, used = make_rng(seed)
        assert isinstance(used, int) and 0 <= used < 2**31
        again, _ = make_rng(used)
        assert rng.random() == again.random()
    with pytest.raises(ValueError):
        make_rng(-5)


def test_temperature_semantics() -> None:
    logits = np.array([2.0, 1.0, 0.0, -1.0], np.float32)
    base = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()

    def frequencies(temperature: float) -> np.ndarray:
        rng, _ = make_rng(0)
        draws = [sample_next_token(logits, temperature, rng=rng) for _ in range(20000)]
        return np.bincount(draws, minlength=4) / len(draws)

    np.testing.assert_allclose(frequencies(1.0), base, atol=0.015)
    cold, hot = frequencies(0.25), frequencies(4.0)
    assert cold[0] > 0.95  # low temperature sharpens towards the argmax
    assert hot.max() < base.max() and hot.min() > base.min()  # high temperature flattens
    np.testing.assert_allclose(filter_logits(logits, 0.5), logits.astype(np.float64) / 0.5)


def test_rejects_bad_arguments() -> None:
    logits = np.zeros(4, np.float32)
    for kwargs in (
        {"temperature": -0.1},
        {"temperature": 1.0, "top_p": 1.5},
        {"temperature": 1.0, "top_k": -1},
    ):
        with pytest.raises(ValueError):
            sample_next_token(logits, **kwargs)
    with pytest.raises(ValueError):
        sample_next_token(np.zeros(0, np.float32), 0.0)
