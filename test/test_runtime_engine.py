"""The torch-free runtime on the tiny export: tasks, seeds, cancel, callbacks, limits, and no torch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mobile_o_ros.validation import InvalidRequest

pytestmark = pytest.mark.runtime


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    img = np.zeros((200, 260, 3), np.uint8)
    img[50:150, 40:140] = (200, 30, 30)
    return img


def test_generate_seeded_with_progress(tiny_runtime) -> None:
    steps: list[tuple[int, int]] = []
    a = tiny_runtime.generate("a red square", steps=3, seed=11, on_step=lambda i, n: steps.append((i, n)))
    b = tiny_runtime.generate("a red square", steps=3, seed=11)
    assert a.image.shape == (512, 512, 3) and a.image.dtype == np.uint8 and a.seed == 11
    assert np.array_equal(a.image, b.image)
    assert steps == [(1, 3), (2, 3), (3, 3)]
    r = tiny_runtime.generate("a red square", steps=2, seed=None)
    assert 0 <= r.seed < 2**63


def test_cancel_stops_within_one_step(tiny_runtime, scene: np.ndarray) -> None:
    done: list[int] = []
    res = tiny_runtime.edit(
        scene,
        "make it blue",
        steps=10,
        seed=1,
        on_step=lambda i, n: done.append(i),
        should_cancel=lambda: len(done) >= 2,
    )
    assert res.cancelled and res.image is None and done == [1, 2]


def test_ask_streams_tokens_and_cancels(tiny_runtime, scene: np.ndarray) -> None:
    seen: list[tuple[str, int]] = []
    res = tiny_runtime.ask(
        scene, "what colour is the square?", max_new_tokens=6, on_token=lambda t, n: seen.append((t, n))
    )
    assert res.num_tokens == len(seen) <= 6
    if seen:
        assert seen[-1][0].strip() == res.answer
    s1 = tiny_runtime.ask(scene, "what?", max_new_tokens=5, temperature=1.0, top_k=20, seed=4)
    s2 = tiny_runtime.ask(scene, "what?", max_new_tokens=5, temperature=1.0, top_k=20, seed=4)
    assert s1.token_ids == s2.token_ids
    c = tiny_runtime.ask(scene, "what?", max_new_tokens=5, should_cancel=lambda: True)
    assert c.cancelled and c.num_tokens == 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda rt, img: rt.generate("", steps=2), "empty prompt"),
        (lambda rt, img: rt.generate("x", steps=0), "steps must be >= 1"),
        (lambda rt, img: rt.generate("x", steps=2, guidance_scale=float("nan")), "must be finite"),
        (lambda rt, img: rt.generate("x", steps=2, guidance_scale=-1.0), ">= 0"),
        (lambda rt, img: rt.ask(img, "  "), "empty question"),
        (lambda rt, img: rt.ask(img, "word " * 3000), "prompt too long"),
        (lambda rt, img: rt.ask(img, "x", temperature=-1), "temperature"),
    ],
)
def test_bad_requests_raise_clear_errors(tiny_runtime, scene: np.ndarray, call, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        call(tiny_runtime, scene)


def test_runtime_runs_where_torch_cannot_be_imported(tiny_export: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "block"
    blocker.mkdir()
    for name in ("torch", "transformers", "diffusers", "timm"):
        (blocker / f"{name}.py").write_text(
            f"raise ImportError('{name} is not allowed in the runtime tier')\n"
        )
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from mobile_o_ros.runtime.engine import MobileORuntime
        rt = MobileORuntime.load({str(tiny_export)!r})
        img = rt.generate("a blue circle", steps=2, seed=0).image
        ans = rt.ask(np.zeros((64, 64, 3), np.uint8), "what?", max_new_tokens=3)
        assert img.shape == (512, 512, 3), img.shape
        assert "torch" not in sys.modules
        print("ok", ans.num_tokens)
    """)
    repo = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), os.environ.get("PYTHONPATH", ""), repo]))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")
