"""``mobile-o annotate`` as a process: killed with SIGKILL at a random point and resumed, it ends with the
records of an uninterrupted run; SIGINT and SIGTERM stop it with a hint; its peak RSS does not grow with the
recording's length."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from annotate_support import embedded_export

from mobile_o_ros.annotate import writer
from mobile_o_ros.annotate.run import Options, annotate
from mobile_o_ros.cli import main

pytestmark = [pytest.mark.runtime, pytest.mark.slow]

FRAMES = 16  # per camera
TASKS = 5


@pytest.fixture(scope="module")
def model() -> str:
    return str(embedded_export())


@pytest.fixture(scope="module")
def bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("field") / "bag"
    assert main(["make-field-bag", str(path), "--frames", str(FRAMES)]) == 0
    return path


@pytest.fixture(scope="module")
def reference(bag: Path, model: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "out"
    annotate(Options([bag], bag / "tasks.yaml", out, model=model), lambda m: None)
    return out


def _command(bag: Path, out: Path, model: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mobile_o_ros",
        "annotate",
        str(bag),
        "--tasks",
        str(bag / "tasks.yaml"),
        "--out",
        str(out),
        "--model",
        model,
        *extra,
    ]


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _start_and_wait_for(
    command: list[str], jsonl: Path, lines: int, deadline_s: float = 240
) -> subprocess.Popen:
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + deadline_s
    while _lines(jsonl) < lines:
        if proc.poll() is not None:
            pytest.fail(f"the run ended before {lines} records: {proc.stderr.read().decode()[-2000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {lines} records within {deadline_s} s")
        time.sleep(0.01)
    return proc


def _same(out: Path) -> list[tuple]:
    return [tuple(r[k] for k in writer.SAME) for r in writer.read_records(out / writer.JSONL)]


def _bag_messages(out: Path) -> list[tuple]:
    from rosbags.highlevel import AnyReader

    with AnyReader([out / writer.BAG]) as reader:
        return [(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()]


def test_sigkill_at_a_random_point_then_resume_equals_an_uninterrupted_run(
    bag: Path, model: str, reference: Path, tmp_path: Path
) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    total = 2 * FRAMES * TASKS
    cut = random.Random(seed).randint(1, total)  # total: killed while rebuilding the outputs, or after
    out = tmp_path / "out"
    proc = _start_and_wait_for(_command(bag, out, model), out / writer.JSONL, cut)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    written = _lines(out / writer.JSONL)
    resumed = subprocess.run(_command(bag, out, model, "--json"), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, f"seed {seed}, cut {cut}: {resumed.stderr[-2000:]}"
    summary = json.loads(resumed.stdout)
    records = _same(out)
    keys = [(r[0], r[1], r[2]) for r in records]
    assert len(keys) == len(set(keys)), f"seed {seed}: a record written twice"
    assert records == _same(reference), f"seed {seed}, killed after {written} records"
    assert summary["records"] == total and summary["records_this_run"] == total - written
    assert (out / writer.CSV).read_text() == (reference / writer.CSV).read_text()
    assert _bag_messages(out) == _bag_messages(reference)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_sigint_and_sigterm_sync_and_say_how_to_resume(
    bag: Path, model: str, tmp_path: Path, sig, code
) -> None:
    out = tmp_path / "out"
    proc = _start_and_wait_for(_command(bag, out, model), out / writer.JSONL, 12)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == code and "Traceback" not in err.decode()
    assert lines[-1].startswith(f"mobile-o: error: interrupted by {signal.Signals(sig).name}: ")
    assert lines[-1].endswith("run the same command again to resume")
    summary = json.loads((out / writer.SUMMARY).read_text())
    assert summary["status"] == "interrupted" and summary["records"] == _lines(out / writer.JSONL) >= 12
    assert (out / writer.JSONL).read_bytes().endswith(b"\n")
    assert not (out / writer.CSV).exists()


RSS = (
    "import resource, sys\n"
    "from mobile_o_ros.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('peak_rss_kb', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
    "sys.exit(code)\n"
)


def _peak_rss_kb(bag: Path, out: Path, model: str) -> int:
    run = subprocess.run(
        [sys.executable, "-c", RSS, *_command(bag, out, model)[3:]],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    return int(run.stderr.strip().splitlines()[-1].split()[-1])


def test_peak_rss_does_not_grow_with_the_recording(model: str, tmp_path: Path) -> None:
    """A recording 10x longer (240 camera frames against 24, every one read, decoded, annotated and in the
    outputs) peaks within 10% of the short run's RSS."""
    short, long = tmp_path / "short", tmp_path / "long"
    assert main(["make-field-bag", str(short), "--frames", "12"]) == 0
    assert main(["make-field-bag", str(long), "--frames", "120"]) == 0
    small = _peak_rss_kb(short, tmp_path / "out_short", model)
    large = _peak_rss_kb(long, tmp_path / "out_long", model)
    frames = json.loads((tmp_path / "out_long" / writer.SUMMARY).read_text())["frames_read"]
    assert frames == 240
    assert large <= 1.10 * small, f"peak RSS {large} kB on the long recording vs {small} kB on the short one"
