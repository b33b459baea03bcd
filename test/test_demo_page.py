"""The demo page: readable frame stamps and thumbnails that stand out from the page."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.ros

pytest.importorskip("std_msgs", reason="ROS message types not importable (source scripts/env.sh)")

from std_msgs.msg import Header  # noqa: E402

from mobile_o_ros.demo import STYLE, _html, _stamp  # noqa: E402


def _header(sec: int, nanosec: int) -> Header:
    h = Header()
    h.stamp.sec, h.stamp.nanosec = sec, nanosec
    return h


def test_stamps_read_as_iso_8601_utc_with_milliseconds() -> None:
    assert _stamp(_header(1_700_000_000, 123_456_789)) == "2023-11-14T22:13:20.123Z"
    assert _stamp(_header(0, 999_999_999)) == "1970-01-01T00:00:00.999Z"


def test_the_page_shows_readable_stamps_and_framed_thumbnails() -> None:
    summary = {
        "vqa": {"accuracy_pct": 100.0, "median_latency_ms": 12.0},
        "generation": {"median_latency_ms": 80.0},
        "steps": 20,
        "wall_s": 15.0,
        "backend": "onnxruntime",
        "model": "shapes",
        "how_to_real": "",
        "finished": "now",
    }
    stamp = _stamp(_header(1_700_000_000, 5_000_000))
    records = {
        "questions": [
            {
                "question": "what colour is the circle?",
                "answer": "red",
                "expected": "red",
                "correct": True,
                "frame": "images/frame_1.png",
                "stamp": stamp,
                "latency_ms": 12.0,
            }
        ],
        "generations": [],
        "edits": [],
    }
    page = _html(summary, records)
    assert "<td>2023-11-14T22:13:20.005Z</td>" in page and "1700000000" not in page
    assert "annotate/index.html" not in page
    summary["annotate"] = {
        "index": "annotate/index.html",
        "frames": 48,
        "frames_failed": 4,
        "bool_enum_right_pct": 100.0,
        "frames_per_second": 9.5,
    }
    page = _html(summary, records)
    assert "<a href='annotate/index.html'>Contact sheet</a> of 48 frames (4 corrupt" in page
    rule = re.search(r"img\.thumb,figure img\{([^}]*)\}", STYLE)
    assert rule is not None and "border:1px solid" in rule.group(1)
