"""The node's parameters: one table (:data:`PARAMETERS`) with defaults, types, ranges and descriptions.

The model's own defaults (denoising steps, guidance, answer tokens) come from its ``manifest.json``; the
``default_*`` and ``max_new_tokens`` parameters override them, and their default 0 keeps the model's.

The table drives the declarations (``ParameterDescriptor`` with ranges or "one of" constraints), the
validation of values set at run time, ``config/mobile_o.yaml`` and the README table test. rclpy is only
imported by the functions that need it, so the table itself can be read without a ROS installation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NAMESPACE = "/mobile_o"
NODE_NAME = "mobile_o"


@dataclass(frozen=True)
class ParamSpec:
    """One declared parameter."""

    name: str
    default: Any
    description: str
    #: Inclusive numeric range (int or float), or None.
    range: tuple[float, float] | None = None
    #: Allowed string values, or None.
    choices: tuple[str, ...] | None = None
    #: When a new value takes effect: ``immediately``, at the next ``configure``, or at ``start-up`` only.
    applies: str = "immediately"

    @property
    def configure_only(self) -> bool:
        """True when a value set at run time waits for the next configure (or restart)."""
        return self.applies != "immediately"

    @property
    def type_name(self) -> str:
        """``string``, ``int``, ``double``, ``bool`` or ``string[]`` (as in the docs table)."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        if isinstance(self.default, float):
            return "double"
        if isinstance(self.default, list):
            return "string[]"
        return "string"

    def constraints(self) -> str:
        """Human-readable constraints for descriptors and docs."""
        if self.choices:
            return "one of: " + ", ".join(self.choices)
        if self.range is not None:
            lo, hi = self.range
            return f"range [{lo:g}, {hi:g}]"
        return ""


PARAMETERS: tuple[ParamSpec, ...] = (
    ParamSpec(
        "model_dir",
        "",
        "Mobile-O export folder (manifest.json + graphs); loaded at configure",
        applies="configure",
    ),
    ParamSpec(
        "backend",
        "onnxruntime",
        "Inference backend",
        choices=("onnxruntime", "tensorrt"),
        applies="configure",
    ),
    ParamSpec(
        "engine_dir",
        "",
        "TensorRT engine cache folder (backend tensorrt); empty = the backend's default",
        applies="configure",
    ),
    ParamSpec("max_steps", 50, "Largest accepted number of denoising steps per request", range=(1, 1000)),
    ParamSpec(
        "max_new_tokens",
        0,
        "Tokens to generate when a question request gives 0; 0 = the model's default (manifest.json)",
        range=(0, 4096),
    ),
    ParamSpec(
        "default_steps",
        0,
        "Denoising steps when a request gives 0; 0 = the model's default (manifest.json)",
        range=(0, 1000),
    ),
    ParamSpec(
        "default_guidance_scale",
        0.0,
        "Classifier-free guidance when a request gives 0; 0 = the model's default (manifest.json)",
        range=(0.0, 50.0),
    ),
    ParamSpec(
        "busy_policy",
        "queue",
        "What to do with a request while the worker is busy: queue it (up to "
        "max_queue) or reject it with a 'busy' message",
        choices=("queue", "reject"),
    ),
    ParamSpec(
        "max_queue", 4, "Requests that may wait behind the running one (busy_policy queue)", range=(1, 64)
    ),
    ParamSpec(
        "camera_topics",
        ["/camera/image_raw"],
        "Camera image topics (sensor_msgs/Image); each one's latest frame is kept",
        applies="configure",
    ),
    ParamSpec(
        "use_compressed",
        False,
        "Subscribe to TOPIC/compressed (sensor_msgs/CompressedImage, JPEG or "
        "PNG) for each camera topic instead of TOPIC",
        applies="configure",
    ),
    ParamSpec(
        "image_reliability",
        "best_effort",
        "Reliability of the camera subscriptions (best_effort matches any publisher)",
        choices=("best_effort", "reliable"),
        applies="configure",
    ),
    ParamSpec(
        "image_qos_depth",
        1,
        "History depth of the camera subscriptions (1 = latest frame only)",
        range=(1, 100),
        applies="configure",
    ),
    ParamSpec(
        "max_frame_age_s",
        0.0,
        "Refuse camera frames older than this many seconds (0 = no limit)",
        range=(0.0, 3600.0),
    ),
    ParamSpec(
        "continuous_question",
        "",
        "When set, ask this question about the latest frame of "
        "continuous_camera at continuous_rate_hz and publish the answer on 'answer'",
    ),
    ParamSpec(
        "continuous_rate_hz",
        1.0,
        "Rate of the continuous question (skipped while a request runs)",
        range=(0.01, 30.0),
    ),
    ParamSpec(
        "continuous_camera", "", "Camera of the continuous question; empty = the first camera_topics entry"
    ),
    ParamSpec(
        "annotation_tasks",
        "",
        "Tasks file (YAML, as for mobile-o annotate): when set, its questions are asked about each camera's "
        "latest frame at annotation_rate_hz and published as FrameAnnotation on 'annotations'",
        applies="configure",
    ),
    ParamSpec(
        "annotation_rate_hz",
        1.0,
        "Frames per second annotated per camera (a frame that comes while the worker is busy is skipped)",
        range=(0.01, 30.0),
    ),
    ParamSpec(
        "warm_rate_hz",
        1.0,
        "While idle, see each camera's newest frame ahead of questions (vision tokens and the prompt "
        "before the question) at most this often; a question about it then prefills only its own tokens "
        "(0 = off)",
        range=(0.0, 30.0),
    ),
    ParamSpec("generated_frame_id", "mobile_o", "frame_id of generated images (they have no source frame)"),
    ParamSpec(
        "diagnostics_period_s", 1.0, "Period of /diagnostics messages", range=(0.1, 60.0), applies="start-up"
    ),
    ParamSpec(
        "autostart",
        True,
        "Configure and activate at start-up (false: wait for a lifecycle manager)",
        applies="start-up",
    ),
)

SPECS: dict[str, ParamSpec] = {p.name: p for p in PARAMETERS}


@dataclass
class Settings:
    """Parameter values as read at configure (and kept up to date for the dynamic ones)."""

    values: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.__dict__["values"][name]
        except KeyError as err:
            raise AttributeError(name) from err


def check_value(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for parameter ``name``, else the reason (set-parameter replies)."""
    spec = SPECS.get(name)
    if spec is None:
        return None
    if spec.choices is not None and value not in spec.choices:
        return f"{name} must be one of {', '.join(spec.choices)}, got {value!r}"
    if spec.range is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = spec.range
        if not (isinstance(value, float) and math.isnan(value)) and lo <= value <= hi:
            return None
        return f"{name} must be in [{lo:g}, {hi:g}], got {value!r}"
    if name == "camera_topics" and (not value or any(not str(t).strip() for t in value)):
        return "camera_topics must be a non-empty list of topic names"
    return None


def descriptor(spec: ParamSpec) -> Any:
    """The rclpy ``ParameterDescriptor`` of a spec (ranges as integer/floating-point ranges)."""
    from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

    types = {
        "bool": ParameterType.PARAMETER_BOOL,
        "int": ParameterType.PARAMETER_INTEGER,
        "double": ParameterType.PARAMETER_DOUBLE,
        "string": ParameterType.PARAMETER_STRING,
        "string[]": ParameterType.PARAMETER_STRING_ARRAY,
    }
    d = ParameterDescriptor(
        name=spec.name,
        type=types[spec.type_name],
        description=f"{spec.description} (applies: {spec.applies})",
        additional_constraints=spec.constraints(),
    )
    if spec.range is not None:
        lo, hi = spec.range
        if spec.type_name == "int":
            d.integer_range = [IntegerRange(from_value=int(lo), to_value=int(hi), step=1)]
        else:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
    return d


def declare_all(node: Any) -> None:
    """Declare every parameter of :data:`PARAMETERS` on ``node`` (values from overrides / params files)."""
    for spec in PARAMETERS:
        default = list(spec.default) if isinstance(spec.default, list) else spec.default
        node.declare_parameter(spec.name, default, descriptor(spec))


def read_all(node: Any) -> Settings:
    """Read every declared parameter; raise ValueError with the first invalid value's reason."""
    values: dict[str, Any] = {}
    for spec in PARAMETERS:
        value = node.get_parameter(spec.name).value
        if isinstance(spec.default, list):
            value = [str(v) for v in (value or [])]
        reason = check_value(spec.name, value)
        if reason:
            raise ValueError(reason)
        values[spec.name] = value
    return Settings(values)


def _default_cell(spec: ParamSpec) -> str:
    if isinstance(spec.default, bool):
        return "true" if spec.default else "false"
    if isinstance(spec.default, list):
        return "[" + ", ".join(f'"{v}"' for v in spec.default) + "]"
    if isinstance(spec.default, str):
        return spec.default if spec.default else '""'
    return str(spec.default)


def markdown_table() -> str:
    """The parameter table of the README, generated from :data:`PARAMETERS`."""
    rows = [
        "| Parameter | Type | Default | Constraints | Applies | Description |",
        "|---|---|---|---|---|---|",
    ]
    for spec in PARAMETERS:
        rows.append(
            f"| `{spec.name}` | {spec.type_name} | `{_default_cell(spec)}` | {spec.constraints() or '—'} | "
            f"{spec.applies} | {spec.description} |"
        )
    return "\n".join(rows)
