"""``mobile-o annotate`` on field recordings from ``mobile-o make-field-bag`` with the embedded model: typed
answers against the truth, every frame accounted for, sqlite3 = MCAP, the rebuilt outputs, resume, the dry
run, and a one-line error for each kind of bad input."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from annotate_support import embedded_export

from mobile_o_ros.annotate import fieldbag, sources, writer
from mobile_o_ros.annotate.run import Options, Sampler, annotate, parse_time
from mobile_o_ros.annotate.tasks import load_tasks
from mobile_o_ros.cli import main
from mobile_o_ros.errors import CliError

pytestmark = pytest.mark.runtime

FRAMES = 24  # per camera


@pytest.fixture(scope="module")
def model() -> str:
    return str(embedded_export())


@pytest.fixture(scope="module")
def bags(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One recording in both storages."""
    root = tmp_path_factory.mktemp("field")
    return {s: _bag(root / s, s) for s in ("mcap", "sqlite3")}


def _bag(path: Path, storage: str = "mcap", frames: int = FRAMES) -> Path:
    assert main(["make-field-bag", str(path), "--frames", str(frames), "--storage", storage]) == 0
    return path


@pytest.fixture(scope="module")
def runs(bags: dict[str, Path], model: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted run of each storage."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for storage, bag in bags.items():
        out[storage] = root / storage
        annotate(Options([bag], bag / "tasks.yaml", out[storage], model=model), lambda m: None)
    return out


def _records(out: Path) -> list[tuple]:
    return [tuple(r[k] for k in writer.SAME) for r in writer.read_records(out / writer.JSONL)]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("mobile-o: error: "), err
    return line


# ------------------------------------------------------------------------------------------- results
def test_typed_answers_are_right_and_every_frame_is_accounted_for(runs: dict[str, Path], bags) -> None:
    scores = fieldbag.score(runs["mcap"], bags["mcap"])
    assert scores["frames"] == 2 * FRAMES and scores["frames_missing"] == []
    assert scores["good_frames_failed"] == [] and scores["corrupt_without_error"] == []
    assert scores["bool_enum_right_pct"] >= 90, scores["per_task"]
    for task in ("hazard", "centre_shape", "background"):
        assert scores["per_task"][task]["of"] == 2 * FRAMES - len(fieldbag.CORRUPT)
    summary = json.loads((runs["mcap"] / writer.SUMMARY).read_text())
    assert summary["status"] == "complete" and summary["frames_read"] == 2 * FRAMES
    assert (summary["frames_annotated"], summary["frames_failed"]) == (2 * FRAMES - 4, 4)
    assert summary["records"] == 2 * FRAMES * 5 and summary["frames_stamped_from_log_time"] == 1
    assert summary["tasks_sha256"] == load_tasks(bags["mcap"] / "tasks.yaml").sha256
    assert summary["model"].startswith("shapes@") and summary["frames_per_second"] > 0


def test_every_corrupt_frame_is_an_error_record_and_nothing_else_is_lost(runs: dict[str, Path]) -> None:
    errors = {}
    for r in writer.read_records(runs["mcap"] / writer.JSONL):
        if r["error"]:
            errors.setdefault((r["topic"], r["frame_index"]), set()).add(r["error"])
            assert r["answer"] is None and r["value"] is None
    assert set(errors) == set(fieldbag.CORRUPT)
    reasons = {k: next(iter(v)) for k, v in errors.items()}
    assert "does not match height*step" in reasons[(fieldbag.FRONT, 5)]
    assert "unsupported image encoding 'h264'" in reasons[(fieldbag.FRONT, 13)]
    assert "cannot decode compressed image" in reasons[(fieldbag.REAR, 7)]
    assert "compressedDepth" in reasons[(fieldbag.REAR, 17)]


def test_sqlite3_and_mcap_copies_give_identical_records(runs: dict[str, Path]) -> None:
    assert _records(runs["mcap"]) == _records(runs["sqlite3"])
    assert (runs["mcap"] / writer.CSV).read_text() == (runs["sqlite3"] / writer.CSV).read_text()


def test_records_keep_the_source_header_and_times(runs: dict[str, Path], bags) -> None:
    truth = {
        (t["topic"], t["frame_index"]): t for t in map(json.loads, (bags["mcap"] / "truth.jsonl").open())
    }
    keys = set()
    for r in writer.read_records(runs["mcap"] / writer.JSONL):
        t = truth[(r["topic"], r["frame_index"])]
        assert r["log_time_ns"] == t["log_time_ns"]
        if t["stamp_ns"]:
            assert (r["stamp_ns"], r["stamp_source"]) == (t["stamp_ns"], "header")
        else:  # a zero stamp falls back to the log time, and the record says so
            assert (r["stamp_ns"], r["stamp_source"]) == (t["log_time_ns"], "log_time")
        assert r["frame_id"] == (
            "front_camera_optical" if r["topic"] == fieldbag.FRONT else "rear_camera_optical"
        )
        key = (r["topic"], r["frame_index"], r["task"])
        assert key not in keys
        keys.add(key)


def test_the_csv_has_a_row_per_frame_and_a_column_per_task(runs: dict[str, Path]) -> None:
    with (runs["mcap"] / writer.CSV).open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * FRAMES
    assert list(rows[0])[-5:] == ["caption", "hazard", "centre_shape", "shapes", "background"]
    good = [r for r in rows if not r["error"]]
    assert {r["hazard"] for r in good} <= {"true", "false"} and {r["shapes"] for r in good} <= {"1", "2"}
    assert all(r["hazard"] == "" for r in rows if r["error"])


def test_the_output_bag_holds_a_frame_annotation_per_record_at_the_source_log_time(
    runs: dict[str, Path],
) -> None:
    from rosbags.highlevel import AnyReader

    bag = runs["mcap"] / writer.BAG
    assert (bag / "metadata.yaml").is_file() and (bag / "bag.mcap").is_file()
    records = list(writer.read_records(runs["mcap"] / writer.JSONL))
    with AnyReader([bag]) as reader:
        assert [c.topic for c in reader.connections] == [writer.ANNOTATION_TOPIC]
        messages = [(t, reader.deserialize(raw, c.msgtype)) for c, t, raw in reader.messages()]
    assert len(messages) == len(records)
    for (log_time, msg), r in zip(messages, records, strict=True):
        assert log_time == r["log_time_ns"] and msg.source_topic == r["topic"]
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == r["stamp_ns"]
        assert msg.header.frame_id == r["frame_id"] and msg.stamp_from_log_time == (
            r["stamp_source"] == "log_time"
        )
        assert (msg.frame_index, msg.task, msg.type, msg.error) == (
            r["frame_index"],
            r["task"],
            r["type"],
            r["error"] or "",
        )
        assert msg.value == (
            json.dumps(r["value"]) if isinstance(r["value"], bool) else str(r["value"] or "")
        )


def test_the_contact_sheet_groups_cameras_and_filters_by_answer(runs: dict[str, Path]) -> None:
    page = (runs["mcap"] / "index.html").read_text()
    assert page.index(f"<h2>{fieldbag.FRONT} ({FRAMES} frames)") < page.index(f"<h2>{fieldbag.REAR}")
    assert page.count('<figure class="card') == 2 * FRAMES and page.count('class="card error"') == 4
    assert '<select data-task="1"><option value="*">any</option><option value="true">' in page
    thumbs = sorted((runs["mcap"] / writer.THUMBS).rglob("*.jpg"))
    assert len(thumbs) == 2 * FRAMES - 4
    for thumb in thumbs[:3]:
        assert str(thumb.relative_to(runs["mcap"])) in page


def test_a_second_run_resumes_with_nothing_left_and_the_same_outputs(
    runs: dict[str, Path], bags, model: str, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    shutil.copytree(runs["mcap"], out)
    before = _records(out)
    summary = annotate(Options([bags["mcap"]], bags["mcap"] / "tasks.yaml", out, model=model), lambda m: None)
    assert summary["frames_resumed"] == 2 * FRAMES and summary["records_this_run"] == 0
    assert _records(out) == before
    assert (out / writer.CSV).read_text() == (runs["mcap"] / writer.CSV).read_text()


def test_sampling_windows_and_topics(bags, model: str, tmp_path: Path) -> None:
    bag = bags["mcap"]
    out = tmp_path / "sampled"
    summary = annotate(
        Options(
            [bag],
            bag / "tasks.yaml",
            out,
            topics=["/front/*"],
            every_n=4,
            start="+1",
            end="+3.9",
            model=model,
        ),
        lambda m: None,
    )
    indices = sorted({r["frame_index"] for r in writer.read_records(out / writer.JSONL)})
    assert indices == [8, 12, 16]  # 5 Hz from t0: frames 5..19 lie in [+1 s, +3.9 s); every 4th index
    assert summary["topics"] == [fieldbag.FRONT] and summary["frames_skipped"] == 15 - 3


def test_an_image_folder_and_edits(model: str, tmp_path: Path) -> None:
    import cv2

    from mobile_o_ros.shapes import world

    folder = tmp_path / "shots"
    (folder / "day2").mkdir(parents=True)
    for i in range(3):
        cv2.imwrite(
            str(folder / ("day2" if i == 2 else "") / f"f{i}.png"), world.render(world.make_scene(i), 128)
        )
    (folder / "broken.jpg").write_bytes(b"not an image")
    tasks = tmp_path / "tasks.yaml"
    tasks.write_text(
        "questions:\n  - {id: n, question: how many shapes are there, type: number}\n"
        "edits:\n  - {id: blue, instruction: make the background blue, every_n: 2, steps: 2}\n"
    )
    out = tmp_path / "out"
    summary = annotate(Options([folder], tasks, out, model=model), lambda m: None)
    records = list(writer.read_records(out / writer.JSONL))
    assert [(r["frame_id"], r["task"]) for r in records] == [
        ("broken.jpg", "n"),
        ("broken.jpg", "blue"),
        ("day2/f2.png", "n"),
        ("f0.png", "n"),
        ("f0.png", "blue"),
        ("f1.png", "n"),
    ]
    assert summary["frames_failed"] == 1 and records[0]["error"] == "cannot read image file broken.jpg"
    edit = records[4]
    assert edit["type"] == "edit" and (out / edit["answer"]).is_file() and edit["value"] == edit["answer"]
    from rosbags.highlevel import AnyReader

    with AnyReader([out / writer.BAG]) as reader:
        images = [c for c in reader.connections if c.topic == "/annotations/blue"]
        assert images and images[0].msgcount == 1


# ------------------------------------------------------------------------------------------- dry run
def test_the_dry_run_lists_plans_and_times_without_writing(bags, model: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "never"
    code = main(
        [
            "annotate",
            str(bags["sqlite3"]),
            "--tasks",
            str(bags["sqlite3"] / "tasks.yaml"),
            "--out",
            str(out),
            "--every-n",
            "2",
            "--dry-run",
            "--json",
            "--model",
            model,
        ]
    )
    assert code == 0 and not out.exists()
    report = json.loads(capsys.readouterr().out)
    rows = {r["topic"]: r for r in report["topics"]}
    assert rows[fieldbag.FRONT] == {
        "topic": fieldbag.FRONT,
        "type": "sensor_msgs/msg/Image",
        "count": FRAMES,
        "encoding": "bgr8",
        "selected": True,
    }
    assert rows[fieldbag.REAR]["encoding"] == "rgb8; jpeg compressed bgr8"
    assert rows[fieldbag.ODOM]["type"] == "nav_msgs/msg/Odometry" and not rows[fieldbag.ODOM]["selected"]
    assert report["planned_frames"] == {fieldbag.FRONT: FRAMES // 2, fieldbag.REAR: FRAMES // 2}
    assert report["records_planned"] == FRAMES * 5
    assert report["timed_frames"] >= 1 and report["estimated_seconds"] > 0


# ------------------------------------------------------------------------------------------- bad input
def test_bad_input_gets_one_line_and_exit_2(bags, tmp_path: Path, capsys) -> None:
    tasks = str(bags["mcap"] / "tasks.yaml")
    out = str(tmp_path / "out")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no bag here")
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "bad.yaml").write_text("questions:\n  - {id: q, question: what, type: boolean}\n")
    cases = [
        ([str(tmp_path / "missing")], "input not found: "),
        ([str(tmp_path / "notes")], "is not a rosbag2 directory (no metadata.yaml, .mcap or .db3 files)"),
        (
            [str(bags["mcap"]), "--topics", "/cam*"],
            f"topic pattern '/cam*' matches no image topic; image topics: {fieldbag.FRONT}, {fieldbag.REAR}",
        ),
        ([str(bags["mcap"]), "--topics", "/odom"], "(it matches /odom, a nav_msgs/msg/Odometry)"),
    ]
    for args, message in cases:
        assert main(["annotate", *args, "--tasks", tasks, "--out", out]) == 2
        assert message in _error_line(capsys)
    assert main(["annotate", str(bags["mcap"]), "--tasks", str(tmp_path / "bad.yaml"), "--out", out]) == 2
    assert _error_line(capsys) == (
        "mobile-o: error: bad.yaml: questions[0].type: must be one of bool, enum, number, text, got 'boolean'"
    )
    assert main(["annotate", str(bags["mcap"]), "--tasks", tasks, "--out", str(tmp_path / "a_file")]) == 2
    assert _error_line(capsys).endswith(f"output folder is a file: {tmp_path / 'a_file'}")
    assert not (tmp_path / "out").exists()


def test_a_used_output_folder_is_resumed_only_by_the_same_command(runs, bags, tmp_path: Path, capsys) -> None:
    out = tmp_path / "used"
    shutil.copytree(runs["mcap"], out)
    base = ["annotate", str(bags["mcap"]), "--tasks", str(bags["mcap"] / "tasks.yaml"), "--out", str(out)]
    assert main([*base, "--no-resume"]) == 2
    assert "is not empty (--no-resume refuses to mix runs)" in _error_line(capsys)
    assert main([*base, "--every-n", "3"]) == 2
    assert "holds a run with other settings (every_n differ)" in _error_line(capsys)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    assert main([*base[:-1], str(tmp_path / "other")]) == 2
    assert "is not empty and holds no annotation run" in _error_line(capsys)


def test_a_truncated_mcap_is_annotated_up_to_the_cut_and_reported(
    bags, model: str, tmp_path: Path, capsys
) -> None:
    whole = next(bags["mcap"].glob("*.mcap")).read_bytes()
    cut = tmp_path / "cut.mcap"
    cut.write_bytes(whole[: int(len(whole) * 0.6)])
    out = tmp_path / "out"
    code = main(
        [
            "annotate",
            str(cut),
            "--tasks",
            str(bags["mcap"] / "tasks.yaml"),
            "--out",
            str(out),
            "--model",
            model,
        ]
    )
    line = _error_line(capsys)
    assert code == 2 and f"{cut} is truncated (a chunk is cut short at byte" in line
    summary = json.loads((out / writer.SUMMARY).read_text())
    read = summary["frames_annotated"] + summary["frames_failed"]
    assert (
        10 < read < 2 * FRAMES
        and summary["problems"]
        and f"annotated the {summary['frames_annotated']}" in line
    )
    first = {(r["topic"], r["frame_index"]) for r in writer.read_records(out / writer.JSONL)}
    expected = {(t, i) for t, i, *_ in (tuple(r[:2]) for r in _records(out))}
    assert (
        first == expected
        and (out / "index.html").is_file()
        and (out / writer.BAG / "metadata.yaml").is_file()
    )


# ------------------------------------------------------------------------------------------- pieces
def test_the_sampler_keeps_ticks_of_bag_time_and_every_nth_index() -> None:
    def frames(times_ms: list[int]) -> list[sources.Frame]:
        return [sources.Frame("/c", "x", t * 10**6, i, lambda: None) for i, t in enumerate(times_ms)]

    camera_30hz = frames([round(i * 1000 / 30) for i in range(60)])  # 2 s
    sampler = Sampler(rate=5.0, every_n=None)
    kept = [f.log_time_ns // 10**6 for f in camera_30hz if sampler.keep(f)]
    assert len(kept) == 10 and kept[:3] == [0, 200, 400]
    sampler = Sampler(rate=None, every_n=7)
    assert [f.index for f in camera_30hz if sampler.keep(f)] == [0, 7, 14, 21, 28, 35, 42, 49, 56]


def test_times_are_bag_seconds_or_offsets() -> None:
    assert parse_time("+1.5", 10**18, "--start") == 10**18 + 1_500_000_000
    assert parse_time("1700000000.25", 10**18, "--end") == 1_700_000_000_250_000_000
    assert parse_time(None, 0, "--end") is None
    for bad in ("soon", "-3", "nan"):
        with pytest.raises(CliError, match="--start: "):
            parse_time(bad, 0, "--start")


def test_the_checkpoint_cuts_a_half_written_line_and_knows_what_is_done(tmp_path: Path) -> None:
    base = {k: None for k in writer.FIELDS}
    lines = [{**base, "topic": "/c", "frame_index": i, "task": t} for i in (0, 1) for t in ("a", "b")]
    text = "".join(json.dumps(r) + "\n" for r in lines[:3]) + '{"topic": "/c", "frame_ind'
    (tmp_path / writer.JSONL).write_text(text)
    checkpoint = writer.Checkpoint(tmp_path)
    assert checkpoint.records_before == 3
    assert checkpoint.done("/c", 0) == {"*"} and checkpoint.done("/c", 1) == {"a"}
    assert checkpoint.done("/c", 2) is None and checkpoint.done("/other", 0) is None
    checkpoint.append(lines[3])
    checkpoint.close()
    assert [json.loads(x)["task"] for x in (tmp_path / writer.JSONL).read_text().splitlines()] == [
        "a",
        "b",
        "a",
        "b",
    ]


def test_the_frame_annotation_definition_matches_the_interface(repo_root: Path) -> None:
    msg = (repo_root / "msg" / "FrameAnnotation.msg").read_text()
    fields = [line for line in msg.splitlines() if line.strip() and not line.startswith("#")]
    assert "\n".join(fields) + "\n" == writer.FRAME_ANNOTATION_MSG


@pytest.mark.ros
def test_the_output_bag_reads_as_the_ros_interface(runs: dict[str, Path]) -> None:
    pytest.importorskip("rclpy", reason="ROS 2 not importable (source scripts/env.sh)")
    from mobile_o_ros.msg import FrameAnnotation
    from rclpy.serialization import deserialize_message
    from rosbags.highlevel import AnyReader

    with AnyReader([runs["mcap"] / writer.BAG]) as reader:
        connection, _, raw = next(iter(reader.messages()))
        ours = reader.deserialize(raw, connection.msgtype)
    msg = deserialize_message(raw, FrameAnnotation)
    assert (msg.source_topic, msg.task, msg.value, msg.header.frame_id) == (
        ours.source_topic,
        ours.task,
        ours.value,
        ours.header.frame_id,
    )


def test_a_folder_without_metadata_is_read_from_its_storage_files(bags, tmp_path: Path) -> None:
    folder = tmp_path / "unclosed"
    folder.mkdir()
    shutil.copy(next(bags["mcap"].glob("*.mcap")), folder / "rec_0.mcap")
    with sources.Inputs([folder]) as inputs:
        assert inputs.notes == [f"{folder} has no metadata.yaml: reading its 1 storage file(s) directly"]
        assert [t.name for t in inputs.image_topics()] == [fieldbag.FRONT, fieldbag.REAR]
        frames = list(inputs.frames([fieldbag.REAR]))
    assert [f.index for f in frames] == list(range(FRAMES))
    assert np.all(np.diff([f.log_time_ns for f in frames]) > 0)
