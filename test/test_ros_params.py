"""The parameter table, its validation and config/mobile_o.yaml (no ROS needed except the descriptor test)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from mobile_o_ros.ros import params

pytestmark = pytest.mark.runtime

CONFIG = Path(__file__).resolve().parents[1] / "config" / "mobile_o.yaml"


def test_config_file_uses_the_wildcard_and_the_defaults() -> None:
    data = yaml.safe_load(CONFIG.read_text())
    assert list(data) == ["/**"]
    values = data["/**"]["ros__parameters"]
    assert set(values) == {p.name for p in params.PARAMETERS}
    for spec in params.PARAMETERS:
        assert values[spec.name] == spec.default, spec.name
        assert type(values[spec.name]) is type(spec.default), spec.name


def test_defaults_satisfy_their_own_constraints() -> None:
    for spec in params.PARAMETERS:
        assert params.check_value(spec.name, spec.default) is None, spec.name
    assert params.SPECS["default_steps"].default <= params.SPECS["max_steps"].default


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("backend", "torch", "backend must be one of onnxruntime, tensorrt"),
        ("busy_policy", "drop", "busy_policy must be one of queue, reject"),
        ("image_reliability", "system_default", "one of best_effort, reliable"),
        ("max_queue", 0, "max_queue must be in [1, 64]"),
        ("max_steps", 1001, "max_steps must be in [1, 1000]"),
        ("continuous_rate_hz", 0.0, "continuous_rate_hz must be in [0.01, 30]"),
        ("default_guidance_scale", math.nan, "default_guidance_scale must be in [0, 50]"),
        ("camera_topics", [], "camera_topics must be a non-empty list"),
        ("camera_topics", ["/ok", " "], "camera_topics must be a non-empty list"),
    ],
)
def test_bad_values_are_refused_with_a_reason(name: str, value: object, reason: str) -> None:
    assert reason in (params.check_value(name, value) or "")


def test_markdown_table_lists_every_parameter() -> None:
    table = params.markdown_table()
    for spec in params.PARAMETERS:
        assert f"| `{spec.name}` | {spec.type_name} |" in table


@pytest.mark.ros
def test_descriptors_carry_ranges_and_choices() -> None:
    pytest.importorskip("rcl_interfaces.msg", reason="ROS 2 messages not importable")
    d = params.descriptor(params.SPECS["max_steps"])
    assert (d.integer_range[0].from_value, d.integer_range[0].to_value, d.integer_range[0].step) == (
        1,
        1000,
        1,
    )
    d = params.descriptor(params.SPECS["default_guidance_scale"])
    assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.0, 50.0)
    d = params.descriptor(params.SPECS["busy_policy"])
    assert d.additional_constraints == "one of: queue, reject" and "applies: immediately" in d.description
    assert "applies: configure" in params.descriptor(params.SPECS["model_dir"]).description
