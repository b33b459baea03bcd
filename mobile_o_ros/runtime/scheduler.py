"""Numpy port of diffusers 0.35.2 ``DPMSolverMultistepScheduler`` for SANA's flow config.

Only the configuration SANA uses is supported: DPM-Solver++ (order 1 or 2, midpoint or heun), flow
prediction with flow sigmas, final sigma zero, no thresholding. The schedule is built in float64 exactly as
diffusers does and the per-step arithmetic runs in float32, mirroring diffusers' 0-d float32 tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_CONFIG_PATH = Path(__file__).resolve().parent.parent / "configs" / "scheduler_config.json"

_F32 = np.float32


def _log32(x: np.float32) -> np.float32:
    # numpy's float32 SIMD log/exp are off by 1-3 ulp in ~25% of cases; torch's are nearly correctly rounded,
    # so evaluate in float64 and round once to float32.
    return _F32(np.log(np.float64(x)))


def _exp32(x: np.float32) -> np.float32:
    return _F32(np.exp(np.float64(x)))


def load_scheduler_config(path: str | Path = DEFAULT_CONFIG_PATH) -> dict[str, Any]:
    """Read a diffusers scheduler config JSON into a dict."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class FlowDPMSolverScheduler:
    """DPM-Solver++ multistep sampler with flow prediction, bit-compatible with diffusers' step arithmetic.

    Usage per generation: ``set_timesteps(n)`` (or ``reset()`` to rerun the same schedule), then call
    ``step(v, t, x)`` once for each ``t`` in ``timesteps``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None) -> None:
        """Build from a diffusers config dict (defaults to the shipped SANA 512px config)."""
        cfg = dict(load_scheduler_config() if config is None else config)
        self.num_train_timesteps = int(cfg.get("num_train_timesteps", 1000))
        self.solver_order = int(cfg.get("solver_order", 2))
        self.solver_type = cfg.get("solver_type", "midpoint")
        self.flow_shift = float(cfg.get("flow_shift", 1.0))
        self.lower_order_final = bool(cfg.get("lower_order_final", True))
        self.euler_at_final = bool(cfg.get("euler_at_final", False))
        self.final_sigmas_type = cfg.get("final_sigmas_type", "zero")
        checks = {
            "algorithm_type": ("dpmsolver++",),
            "prediction_type": ("flow_prediction",),
            "use_flow_sigmas": (True,),
            "thresholding": (False, None),
            "use_dynamic_shifting": (False, None),
            "final_sigmas_type": ("zero",),
            "solver_type": ("midpoint", "heun"),
            "solver_order": (1, 2),
        }
        for key, allowed in checks.items():
            if cfg.get(key) not in allowed:
                raise NotImplementedError(
                    f"scheduler config {key}={cfg.get(key)!r} unsupported (need {allowed})"
                )
        self.timesteps = np.zeros(0, dtype=np.int64)
        self.sigmas = np.zeros(0, dtype=np.float32)
        self.num_inference_steps: int | None = None
        self.step_index: int | None = None
        self.reset()

    # ------------------------------------------------------------------ schedule
    def timesteps_for(self, num_inference_steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(timesteps int64 [n], sigmas float32 [n+1])`` for ``n`` steps without changing state."""
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        alphas = np.linspace(1, 1 / self.num_train_timesteps, n + 1)
        sigmas = 1.0 - alphas
        shift = self.flow_shift
        sigmas = np.flip(shift * sigmas / (1 + (shift - 1) * sigmas))[:-1].copy()
        timesteps = (sigmas * self.num_train_timesteps).astype(np.int64)  # truncation, like torch .to(int64)
        sigmas = np.concatenate([sigmas, [0.0]]).astype(np.float32)
        return timesteps, sigmas

    def set_timesteps(self, num_inference_steps: int) -> None:
        """Set the schedule for ``num_inference_steps`` steps and clear the solver state.

        A run starts at the schedule's first step (diffusers' ``set_begin_index(0)``): from 599 steps up the
        truncated timesteps repeat 999, and a lookup by timestep would start at the second of them.
        """
        self.timesteps, self.sigmas = self.timesteps_for(num_inference_steps)
        self.num_inference_steps = len(self.timesteps)
        self.reset()

    def reset(self) -> None:
        """Forget the multistep history so the same schedule can serve a new generation."""
        self.model_outputs: list[np.ndarray | None] = [None] * self.solver_order
        self.lower_order_nums = 0
        self.step_index = 0 if self.num_inference_steps else None

    def scale_model_input(self, sample: np.ndarray) -> np.ndarray:
        """Identity, as in diffusers for this scheduler."""
        return sample

    # ------------------------------------------------------------------ stepping
    def _index_for_timestep(self, timestep: int) -> int:
        candidates = np.nonzero(self.timesteps == int(timestep))[0]
        if len(candidates) == 0:
            return len(self.timesteps) - 1
        return int(candidates[1] if len(candidates) > 1 else candidates[0])

    @staticmethod
    def _alpha_sigma_lambda(sigma: np.float32) -> tuple[np.float32, np.float32, np.float32]:
        alpha = _F32(1) - sigma
        with np.errstate(divide="ignore"):
            lam = _log32(alpha) - _log32(sigma)
        return alpha, sigma, lam

    def _first_order(self, i: int, x0: np.ndarray, sample: np.ndarray) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(self.sigmas[i])
        h = lambda_t - lambda_s
        return (sigma_t / sigma_s) * sample - (alpha_t * (_exp32(-h) - _F32(1))) * x0

    def _second_order(self, i: int, sample: np.ndarray) -> np.ndarray:
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(self.sigmas[i + 1])
        _, sigma_s0, lambda_s0 = self._alpha_sigma_lambda(self.sigmas[i])
        _, _, lambda_s1 = self._alpha_sigma_lambda(self.sigmas[i - 1])
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        assert m0 is not None and m1 is not None, "a second-order step follows a first-order one"
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (_F32(1) / r0) * (m0 - m1)
        em1 = _exp32(-h) - _F32(1)
        if self.solver_type == "midpoint":
            return (sigma_t / sigma_s0) * sample - (alpha_t * em1) * d0 - _F32(0.5) * (alpha_t * em1) * d1
        return (sigma_t / sigma_s0) * sample - (alpha_t * em1) * d0 + (alpha_t * (em1 / h + _F32(1))) * d1

    def step(self, model_output: np.ndarray, timestep: int, sample: np.ndarray) -> np.ndarray:
        """Advance ``sample`` (x_t) one step given the velocity ``model_output``; returns float32 x_{t-1}."""
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps() before step()")
        i = self._index_for_timestep(timestep) if self.step_index is None else self.step_index
        if i >= len(self.timesteps):
            raise RuntimeError("scheduler already finished; call reset() or set_timesteps() for a new run")
        n = len(self.timesteps)
        last = i == n - 1
        lower_order_final = last and (
            self.euler_at_final or (self.lower_order_final and n < 15) or self.final_sigmas_type == "zero"
        )
        sample = np.asarray(sample, dtype=np.float32)
        x0 = sample - self.sigmas[i] * np.asarray(model_output, dtype=np.float32)
        self.model_outputs = [*self.model_outputs[1:], x0]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.solver_order == 1 or self.lower_order_nums < 1 or lower_order_final:
                prev = self._first_order(i, x0, sample)
            else:
                prev = self._second_order(i, sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        self.step_index = i + 1
        return prev.astype(np.float32, copy=False)
