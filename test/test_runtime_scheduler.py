"""The numpy DPM-Solver++ flow scheduler against diffusers 0.35.2's DPMSolverMultistepScheduler."""

from __future__ import annotations

import numpy as np
import pytest

from mobile_o_ros.runtime.scheduler import FlowDPMSolverScheduler, load_scheduler_config

# The tests marked torch compare with diffusers (on torch); the others need neither.
pytestmark = pytest.mark.runtime

TIMESTEPS_20 = [
    999,
    982,
    963,
    944,
    922,
    899,
    874,
    847,
    817,
    785,
    749,
    710,
    666,
    617,
    562,
    499,
    428,
    345,
    249,
    136,
]
TIMESTEPS_15 = [999, 976, 950, 922, 891, 856, 817, 773, 723, 666, 599, 521, 428, 315, 176]
SHAPE = (1, 32, 16, 16)


@pytest.fixture(scope="module")
def config() -> dict:
    return load_scheduler_config()


def _reference(config: dict, steps: int):
    import diffusers

    ref = diffusers.DPMSolverMultistepScheduler.from_config(config)
    ref.set_timesteps(steps)
    ref.set_begin_index(0)  # as the reference pipeline does: a run starts at the first step
    return ref


@pytest.mark.torch
def test_config_file_is_sana_512(config: dict) -> None:
    import diffusers

    ref = diffusers.DPMSolverMultistepScheduler.from_config(config)
    expected = {
        "algorithm_type": "dpmsolver++",
        "solver_order": 2,
        "solver_type": "midpoint",
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": True,
        "flow_shift": 3.0,
        "final_sigmas_type": "zero",
        "lower_order_final": True,
        "euler_at_final": False,
        "num_train_timesteps": 1000,
        "timestep_spacing": "linspace",
        "thresholding": False,
    }
    assert config["_class_name"] == "DPMSolverMultistepScheduler"
    for key, value in expected.items():
        assert ref.config[key] == value, key


@pytest.mark.parametrize(("steps", "expected"), [(20, TIMESTEPS_20), (15, TIMESTEPS_15)])
def test_known_timesteps(config: dict, steps: int, expected: list[int]) -> None:
    ours = FlowDPMSolverScheduler(config)
    ours.set_timesteps(steps)
    assert ours.timesteps.dtype == np.int64
    assert ours.timesteps.tolist() == expected
    assert ours.sigmas[-1] == 0.0 and ours.sigmas.dtype == np.float32


@pytest.mark.torch
@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7, 10, 14, 15, 16, 20, 25, 30, 50, 100])
def test_schedule_matches_diffusers(config: dict, steps: int) -> None:
    ref = _reference(config, steps)
    timesteps, sigmas = FlowDPMSolverScheduler(config).timesteps_for(steps)
    np.testing.assert_array_equal(timesteps, ref.timesteps.numpy())
    np.testing.assert_array_equal(sigmas, ref.sigmas.numpy())


def _trajectory(config: dict, steps: int, seed: int) -> tuple[float, float]:
    """Run both schedulers; returns (worst per-step error on identical inputs, final error of own runs)."""
    import torch

    ref, ours, own = _reference(config, steps), FlowDPMSolverScheduler(config), FlowDPMSolverScheduler(config)
    ours.set_timesteps(steps)
    own.set_timesteps(steps)
    rng = np.random.default_rng(seed)
    x_ref = rng.standard_normal(SHAPE).astype(np.float32)
    x_own = x_ref.copy()
    worst = 0.0
    for t in ours.timesteps:
        v = (rng.standard_normal(SHAPE) * 1.5).astype(np.float32)
        nxt = ref.step(torch.from_numpy(v), torch.tensor(t), torch.from_numpy(x_ref)).prev_sample.numpy()
        step = ours.step(v, int(t), x_ref)
        assert step.dtype == np.float32 and step.shape == SHAPE
        worst = max(worst, float(np.abs(step - nxt).max()))
        x_own = own.step(v, int(t), x_own)
        x_ref = nxt
    return worst, float(np.abs(x_own - x_ref).max())


@pytest.mark.torch
def test_full_20_step_trajectory(config: dict) -> None:
    per_step, final = _trajectory(config, 20, seed=0)
    assert per_step <= 1e-6
    # Each own run feeds its float32 output back in, so rounding differences between torch's kernels and
    # numpy (which vary with the vector units and thread count) add up over 20 steps: 1.4e-6 in one full run.
    assert final <= 5e-6


@pytest.mark.torch
@pytest.mark.parametrize("steps", [1, 2, 3, 5, 14, 15, 30, 50])
def test_other_step_counts(config: dict, steps: int) -> None:
    per_step, _ = _trajectory(config, steps, seed=steps)
    assert per_step <= 1e-6


@pytest.mark.torch
@pytest.mark.slow
def test_a_run_of_600_steps_starts_at_the_first_and_matches_diffusers(config: dict) -> None:
    """From 599 steps up the truncated timesteps start 999, 999: a run still takes every step once."""
    timesteps, _ = FlowDPMSolverScheduler(config).timesteps_for(600)
    assert timesteps[0] == timesteps[1] == 999
    per_step, _ = _trajectory(config, 600, seed=600)
    assert per_step <= 2e-6  # about one float32 ulp of samples near 8 over 600 draws


def test_every_step_of_a_long_schedule_runs(config: dict) -> None:
    ours = FlowDPMSolverScheduler(config)
    ours.set_timesteps(1000)
    x = np.zeros(SHAPE, np.float32)
    for t in ours.timesteps:
        x = ours.step(np.ones(SHAPE, np.float32), int(t), x)
    assert ours.step_index == 1000 and np.isfinite(x).all()


@pytest.mark.parametrize("steps", [1, 2])
def test_last_step_returns_x0(config: dict, steps: int) -> None:
    ours = FlowDPMSolverScheduler(config)
    ours.set_timesteps(steps)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(SHAPE).astype(np.float32)
    for t in ours.timesteps[:-1]:
        x = ours.step(rng.standard_normal(SHAPE).astype(np.float32), int(t), x)
    v = rng.standard_normal(SHAPE).astype(np.float32)
    out = ours.step(v, int(ours.timesteps[-1]), x)
    np.testing.assert_array_equal(out, x - ours.sigmas[-2] * v)
    assert np.isfinite(out).all()


def test_reset_reuses_instance(config: dict) -> None:
    ours = FlowDPMSolverScheduler(config)
    ours.set_timesteps(20)
    rng = np.random.default_rng(2)
    x0 = rng.standard_normal(SHAPE).astype(np.float32)
    vs = [rng.standard_normal(SHAPE).astype(np.float32) for _ in ours.timesteps]

    def run() -> np.ndarray:
        x = x0
        for t, v in zip(ours.timesteps, vs, strict=True):
            x = ours.step(v, int(t), x)
        return x

    first = run()
    with pytest.raises(RuntimeError):
        ours.step(vs[0], int(ours.timesteps[0]), x0)
    ours.reset()
    np.testing.assert_array_equal(run(), first)
    ours.set_timesteps(20)
    np.testing.assert_array_equal(run(), first)


def test_rejects_bad_input(config: dict) -> None:
    with pytest.raises(ValueError):
        FlowDPMSolverScheduler(config).timesteps_for(0)
    with pytest.raises(ValueError):
        FlowDPMSolverScheduler(config).step(np.zeros(SHAPE, np.float32), 999, np.zeros(SHAPE, np.float32))
    with pytest.raises(NotImplementedError):
        FlowDPMSolverScheduler({**config, "prediction_type": "epsilon"})
