"""The annotation loop: sample frames, see each once, ask every task, append records; resume and signals.

Each sampled frame is decoded (:mod:`~mobile_o_ros.annotate.decode`), seen once by the runtime
(:meth:`~mobile_o_ros.runtime.engine.MobileORuntime.frame`: one vision pass and one prefill of the prompt
before the question) and asked every question of the tasks file with greedy, seeded decoding; an edit runs
on every ``every_n``-th sampled frame of each camera. Each task's record is appended to the checkpoint as
it finishes. A frame that cannot be read or decoded gets an error record per task and the run goes on.

Running the same command again on the same output folder skips the (frame, task) pairs already written.
SIGINT and SIGTERM finish the task in flight, sync the checkpoint, and stop with a hint on resuming; the
other outputs are rebuilt when a run completes.
"""

from __future__ import annotations

import hashlib
import json
import signal
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import numpy as np

from mobile_o_ros.annotate import writer
from mobile_o_ros.annotate.decode import DecodeError, decode_message
from mobile_o_ros.annotate.sources import Frame, InputError, Inputs
from mobile_o_ros.annotate.tasks import Tasks, read_value
from mobile_o_ros.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, CliError
from mobile_o_ros.manifest import int8_graphs

Log = Callable[[str], None]
#: Longest side of a contact-sheet thumbnail.
THUMB_SIDE = 160
#: Seconds between progress lines.
PROGRESS_PERIOD_S = 10.0


@dataclass
class Options:
    """What ``mobile-o annotate`` was asked to do."""

    inputs: list[Path]
    tasks_path: Path
    out_dir: Path
    topics: list[str] | None = None
    rate: float | None = None
    every_n: int | None = None
    start: str | None = None
    end: str | None = None
    model: str | None = None
    backend: str = "onnxruntime"
    resume: bool = True


# ------------------------------------------------------------------------------------------- sampling
def parse_time(text: str | None, bag_start_ns: int, what: str) -> int | None:
    """``--start``/``--end``: seconds of bag time (absolute), or ``+S`` seconds after the first message."""
    if text is None:
        return None
    raw = text.strip()
    try:
        seconds = Decimal(raw[1:] if raw.startswith("+") else raw)  # exact: epoch nanoseconds exceed a float
    except InvalidOperation:
        raise CliError(
            f"{what}: expected seconds of bag time or +seconds from its start, got {text!r}"
        ) from None
    if not seconds.is_finite() or seconds < 0:
        raise CliError(f"{what}: must be a finite time >= 0, got {text!r}")
    return (bag_start_ns if raw.startswith("+") else 0) + int(seconds * 10**9)


class Sampler:
    """``--every-n N`` (frame index multiple of N) or ``--rate HZ`` (per topic, the first frame at or after
    each tick of bag time)."""

    def __init__(self, rate: float | None, every_n: int | None) -> None:
        self.period_ns = round(1e9 / rate) if rate else 0
        self.every_n = every_n or 1
        self.next_due: dict[str, int] = {}

    def keep(self, frame: Frame) -> bool:
        """Whether to annotate ``frame`` (called once per frame, in order)."""
        if frame.index % self.every_n:
            return False
        if not self.period_ns:
            return True
        due = self.next_due.get(frame.topic)
        if due is not None and frame.log_time_ns < due:
            return False
        base = frame.log_time_ns if due is None else due
        while base <= frame.log_time_ns:
            base += self.period_ns
        self.next_due[frame.topic] = base
        return True


# ------------------------------------------------------------------------------------------- model
def model_id(manifest: dict[str, Any], export_dir: Path) -> str:
    """``name@hash``: the source checkpoint's sha256 (16 hex digits), else the manifest's; with
    ``+int8:GRAPHS`` when graphs of the export are int8, so a run never mixes fp32 and int8 answers."""
    name = manifest.get("model", {}).get("name", "model")
    sha = (manifest.get("source_checkpoint") or {}).get("sha256")
    if not sha:
        sha = hashlib.sha256((export_dir / "manifest.json").read_bytes()).hexdigest()
    int8 = int8_graphs(manifest)
    return f"{name}@{sha[:16]}" + (f"+int8:{','.join(int8)}" if int8 else "")


def load_runtime(model: str | None, backend: str, log: Log) -> Any:
    """The runtime of a model argument (default: the embedded model, its export made once and cached)."""
    from mobile_o_ros import model_store
    from mobile_o_ros.manifest import ManifestError
    from mobile_o_ros.runtime.backend import BackendError
    from mobile_o_ros.runtime.engine import MobileORuntime

    try:
        export = model_store.export_of(model, progress=log)
        return MobileORuntime.load(export, backend=backend)
    except (model_store.ModelError, ManifestError) as err:
        raise CliError(str(err)) from err
    except (BackendError, ImportError, OSError) as err:
        raise CliError(f"cannot load the model on {backend}: {err}", 1) from err


# ------------------------------------------------------------------------------------------- frames
@dataclass
class Seen:
    """A read frame: its pixels (or why there are none) and its header fields."""

    rgb: np.ndarray | None
    error: str
    stamp_ns: int
    stamp_source: str
    frame_id: str


def read_frame(frame: Frame) -> Seen:
    """Load and decode one frame; failures become ``error`` (never an exception)."""
    import cv2

    if frame.path is not None:
        bgr = cv2.imread(str(frame.path), cv2.IMREAD_COLOR)
        rel = str(frame.load())
        if bgr is None or bgr.size == 0:
            return Seen(None, f"cannot read image file {rel}", frame.log_time_ns, "file", rel)
        return Seen(np.ascontiguousarray(bgr[:, :, ::-1]), "", frame.log_time_ns, "file", rel)
    try:
        msg = frame.load()
    except Exception as err:  # a damaged message: the bag reader's own errors vary
        first = (str(err).splitlines() or [type(err).__name__])[0]
        return Seen(None, f"cannot deserialize {frame.msgtype}: {first}", frame.log_time_ns, "log_time", "")
    header = getattr(msg, "header", None)
    stamp = getattr(header, "stamp", None)
    stamp_ns = int(getattr(stamp, "sec", 0)) * 10**9 + int(getattr(stamp, "nanosec", 0)) if stamp else 0
    frame_id = str(getattr(header, "frame_id", "") or "")
    source = "header"
    if stamp_ns <= 0:
        stamp_ns, source = frame.log_time_ns, "log_time"
    try:
        return Seen(decode_message(msg), "", stamp_ns, source, frame_id)
    except DecodeError as err:
        return Seen(None, str(err), stamp_ns, source, frame_id)


def write_thumbnail(out_dir: Path, frame: Frame, rgb: np.ndarray) -> None:
    """The contact sheet's thumbnail of a frame (JPEG, longest side :data:`THUMB_SIDE`)."""
    import cv2

    path = out_dir / writer.thumb_path(frame.topic, frame.index)
    path.parent.mkdir(parents=True, exist_ok=True)
    scale = THUMB_SIDE / max(rgb.shape[:2])
    small = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else rgb
    cv2.imwrite(str(path), np.ascontiguousarray(small[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 80])


class Annotator:
    """Asks a frame every task due on it and makes its records."""

    def __init__(self, runtime: Any, tasks: Tasks, model: str, out_dir: Path) -> None:
        self.runtime, self.tasks, self.model, self.out_dir = runtime, tasks, model, out_dir

    def due(self, ordinal: int) -> list[str]:
        """The tasks of a topic's ``ordinal``-th sampled frame: every question, and the edits due."""
        return [q.id for q in self.tasks.questions] + [
            e.id for e in self.tasks.edits if ordinal % e.every_n == 0
        ]

    def records(self, frame: Frame, seen: Seen, tasks: list[str]) -> Iterator[dict[str, Any]]:
        """One record per task of ``tasks``, each as soon as it is answered."""
        base = {
            "topic": frame.topic,
            "frame_index": frame.index,
            "stamp_ns": seen.stamp_ns,
            "stamp_source": seen.stamp_source,
            "log_time_ns": frame.log_time_ns,
            "frame_id": seen.frame_id,
            "model": self.model,
        }
        by_id = {q.id: q for q in self.tasks.questions}
        edits = {e.id: e for e in self.tasks.edits}
        if seen.rgb is None:
            for task in tasks:
                q = by_id.get(task)
                yield {
                    **base,
                    "task": task,
                    "type": q.type if q else "edit",
                    "question": q.question if q else edits[task].instruction,
                    "answer": None,
                    "value": None,
                    "error": seen.error,
                    "latency_ms": 0.0,
                }
            return
        t0 = time.perf_counter()
        context = self.runtime.frame(seen.rgb)
        for task in tasks:
            if task in by_id:
                q = by_id[task]
                result = self.runtime.ask_about(
                    context,
                    q.question,
                    max_new_tokens=q.max_new_tokens,
                    temperature=0.0,
                    seed=self.tasks.seed,
                )
                answer, value, kind, text = result.answer, read_value(q, result.answer), q.type, q.question
            else:
                e = edits[task]
                image = self.runtime.edit_frame(context, e.instruction, steps=e.steps, seed=e.seed).image
                answer = writer.edit_path(frame.topic, frame.index, e.id)
                path = self.out_dir / answer
                path.parent.mkdir(parents=True, exist_ok=True)
                import cv2

                cv2.imwrite(str(path), np.ascontiguousarray(image[:, :, ::-1]))
                value, kind, text = answer, "edit", e.instruction
            t1 = time.perf_counter()
            yield {
                **base,
                "task": task,
                "type": kind,
                "question": text,
                "answer": answer,
                "value": value,
                "error": None,
                "latency_ms": round((t1 - t0) * 1000, 2),
            }
            t0 = t1


# ------------------------------------------------------------------------------------------- signals
class StopFlag:
    """SIGINT/SIGTERM set a flag that the loop checks between tasks (a second SIGINT stops at once)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopFlag:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ------------------------------------------------------------------------------------------- run
def _run_config(options: Options, tasks: Tasks, model: str, backend: str) -> dict[str, Any]:
    """What a resumed run must share with the run its folder holds."""
    return {
        "inputs": [str(p.resolve()) for p in options.inputs],
        "tasks_sha256": tasks.sha256,
        "topics": options.topics,
        "rate": options.rate,
        "every_n": options.every_n,
        "start": options.start,
        "end": options.end,
        "model": model,
        "backend": backend,
    }


def prepare_out_dir(out_dir: Path, resume: bool) -> None:
    """Check the output folder: a file, or a non-empty folder with ``--no-resume`` or without a run, is an
    error."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CliError(f"output folder is a file: {out_dir}")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not resume:
            raise CliError(
                f"output folder {out_dir} is not empty (--no-resume refuses to mix runs); give a new one"
            )
        if not (out_dir / writer.RUN).is_file():
            raise CliError(f"output folder {out_dir} is not empty and holds no annotation run ({writer.RUN})")


def check_config(out_dir: Path, config: dict[str, Any]) -> bool:
    """Compare with the run the folder holds; returns whether it is a resume. Another run is an error."""
    path = out_dir / writer.RUN
    if not path.is_file():
        return False
    before = json.loads(path.read_text())
    changed = [k for k in config if before.get(k) != config[k]]
    if changed:
        raise CliError(
            f"{out_dir} holds a run with other settings ({', '.join(changed)} differ); run the same "
            "command to resume it, or give another --out"
        )
    return True


@dataclass
class Counters:
    """This run's frame counts."""

    read: int = 0
    sampled: int = 0
    skipped: int = 0
    resumed: int = 0
    annotated: int = 0
    failed: int = 0
    records: int = 0
    seconds_annotating: float = 0.0
    per_topic: dict[str, int] = field(default_factory=dict)


def summarize(
    out_dir: Path,
    options: Options,
    tasks: Tasks,
    model: str,
    counters: Counters,
    problems: list[str],
    status: str,
    wall_s: float,
) -> dict[str, Any]:
    """summary.json's content (frame and value counts read back from the JSONL)."""
    frames = failed = records = from_log = 0
    values: dict[str, dict[str, int]] = {q.id: {} for q in tasks.questions if q.type in ("bool", "enum")}
    for group in writer.frames_of(writer.read_records(out_dir / writer.JSONL)):
        frames += 1
        records += len(group)
        failed += any(r.get("error") for r in group)
        from_log += group[0]["stamp_source"] == "log_time"
        for r in group:
            if r["task"] in values and not r.get("error"):
                key = json.dumps(r["value"])
                values[r["task"]][key] = values[r["task"]].get(key, 0) + 1
    return {
        "status": status,
        "inputs": [str(p) for p in options.inputs],
        "topics": sorted(counters.per_topic),
        "model": model,
        "backend": options.backend,
        "tasks_file": str(options.tasks_path),
        "tasks_sha256": tasks.sha256,
        "tasks": list(tasks.ids),
        "frames_read": counters.read,
        "frames_skipped": counters.skipped,
        "frames_sampled": counters.sampled,
        "frames_resumed": counters.resumed,
        "frames_annotated": frames - failed,
        "frames_failed": failed,
        "frames_stamped_from_log_time": from_log,
        "records": records,
        "records_this_run": counters.records,
        "frames_annotated_this_run": counters.annotated,
        "frames_per_second": round(counters.annotated / counters.seconds_annotating, 3)
        if counters.seconds_annotating
        else None,
        "seconds": round(wall_s, 2),
        "values": values,
        "problems": problems,
    }


def annotate(options: Options, log: Log) -> dict[str, Any]:
    """Run ``mobile-o annotate``; returns the summary. Raises CliError on bad input, on an interruption
    (after syncing the checkpoint), and after the run when part of an input could not be read."""
    from mobile_o_ros.annotate.contact_sheet import write_contact_sheet
    from mobile_o_ros.annotate.tasks import TasksError, load_tasks

    t_start = time.perf_counter()
    try:
        tasks = load_tasks(options.tasks_path)
    except TasksError as err:
        raise CliError(str(err)) from err
    prepare_out_dir(options.out_dir, options.resume)
    try:
        inputs = Inputs(options.inputs)
    except InputError as err:
        raise CliError(str(err)) from err
    with inputs:
        for note in inputs.notes:
            log(f"annotate: {note}")
        try:
            topics = inputs.select(options.topics)
        except InputError as err:
            raise CliError(str(err)) from err
        start_ns = parse_time(options.start, inputs.start_time, "--start")
        end_ns = parse_time(options.end, inputs.start_time, "--end")
        runtime = load_runtime(options.model, options.backend, log)
        model = model_id(runtime.manifest, runtime.export_dir)
        options.out_dir.mkdir(parents=True, exist_ok=True)
        config = _run_config(options, tasks, model, runtime.backend.name)
        resuming = check_config(options.out_dir, config)
        writer.write_json(options.out_dir / writer.RUN, config)
        checkpoint = writer.Checkpoint(options.out_dir)
        if resuming:
            log(f"annotate: resuming: {checkpoint.records_before} records already in {checkpoint.path}")
        counters = Counters()
        annotator = Annotator(runtime, tasks, model, options.out_dir)
        sampler = Sampler(options.rate, options.every_n)
        ordinals: dict[str, int] = {}
        stop = StopFlag()
        last_log = time.monotonic()
        log(
            f"annotate: {len(topics)} topic(s): {', '.join(topics)}; tasks: {', '.join(tasks.ids)}; "
            f"model {model}"
        )
        try:
            with stop:
                for frame in inputs.frames(topics, start_ns, end_ns):
                    if stop.signum is not None:
                        break
                    counters.read += 1
                    counters.per_topic[frame.topic] = counters.per_topic.get(frame.topic, 0) + 1
                    if not sampler.keep(frame):
                        counters.skipped += 1
                        continue
                    counters.sampled += 1
                    ordinal = ordinals.get(frame.topic, 0)
                    ordinals[frame.topic] = ordinal + 1
                    done = checkpoint.done(frame.topic, frame.index) or set()
                    due = [t for t in annotator.due(ordinal) if "*" not in done and t not in done]
                    if not due:
                        counters.resumed += 1
                        continue
                    t0 = time.perf_counter()
                    seen = read_frame(frame)
                    if seen.rgb is not None:
                        write_thumbnail(options.out_dir, frame, seen.rgb)
                    for record in annotator.records(frame, seen, due):
                        checkpoint.append(record)
                        counters.records += 1
                        if stop.signum is not None:
                            break
                    checkpoint.sync()
                    counters.seconds_annotating += time.perf_counter() - t0
                    counters.failed += seen.rgb is None
                    counters.annotated += seen.rgb is not None
                    if time.monotonic() - last_log > PROGRESS_PERIOD_S:
                        last_log = time.monotonic()
                        rate = counters.annotated / max(counters.seconds_annotating, 1e-9)
                        log(
                            f"annotate: {counters.read} frames read, {counters.annotated} annotated, "
                            f"{counters.failed} failed ({rate:.2f} frames/s)"
                        )
        finally:
            checkpoint.close()
        problems = inputs.problems
        if stop.signum is not None:
            name = signal.Signals(stop.signum).name
            summary = summarize(
                options.out_dir,
                options,
                tasks,
                model,
                counters,
                problems,
                "interrupted",
                time.perf_counter() - t_start,
            )
            writer.write_json(options.out_dir / writer.SUMMARY, summary)
            raise CliError(
                f"interrupted by {name}: {counters.annotated} frames annotated in this run, "
                f"{summary['records']} records in {checkpoint.path}; run the same command again to resume",
                EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 128 + stop.signum,
            )
        log("annotate: rebuilding annotations.csv, the bag and index.html from the checkpoint")
        writer.write_csv(options.out_dir, tasks)
        writer.write_bag(options.out_dir, tasks)
        write_contact_sheet(
            options.out_dir, tasks, f"Annotations: {', '.join(p.name for p in options.inputs)}"
        )
        summary = summarize(
            options.out_dir,
            options,
            tasks,
            model,
            counters,
            problems,
            "complete",
            time.perf_counter() - t_start,
        )
        writer.write_json(options.out_dir / writer.SUMMARY, summary)
        if problems:
            raise CliError(
                f"{problems[0]}; annotated the {summary['frames_annotated']} frames before it "
                f"(outputs in {options.out_dir})",
                EXIT_BAD_INPUT,
            )
        return summary


# ------------------------------------------------------------------------------------------- dry run
def dry_run(options: Options, log: Log, timed_frames: int = 4) -> dict[str, Any]:
    """What a run would do: topics, types, encodings, counts, planned frames, and a run-time estimate from
    a few timed frames (nothing is written)."""
    from mobile_o_ros.annotate.tasks import TasksError, load_tasks

    try:
        tasks = load_tasks(options.tasks_path)
    except TasksError as err:
        raise CliError(str(err)) from err
    if options.out_dir.exists() and not options.out_dir.is_dir():
        raise CliError(f"output folder is a file: {options.out_dir}")
    try:
        inputs = Inputs(options.inputs)
    except InputError as err:
        raise CliError(str(err)) from err
    with inputs:
        try:
            topics = inputs.select(options.topics)
        except InputError as err:
            raise CliError(str(err)) from err
        start_ns = parse_time(options.start, inputs.start_time, "--start")
        end_ns = parse_time(options.end, inputs.start_time, "--end")
        rows = []
        for t in inputs.topics():
            encoding = ""
            if t.is_image:
                msg = inputs.first_message(t.name)
                encoding = (
                    str(getattr(msg, "encoding", None) or getattr(msg, "format", "") or "") if msg else ""
                )
                encoding = encoding or "(empty format)" if msg is not None else ""
            rows.append(
                {
                    "topic": t.name,
                    "type": t.msgtype,
                    "count": t.count,
                    "encoding": encoding,
                    "selected": t.name in topics,
                }
            )
        sampler = Sampler(options.rate, options.every_n)
        planned: dict[str, int] = dict.fromkeys(topics, 0)
        sample: list[Frame] = []
        for frame in inputs.frames(topics, start_ns, end_ns):
            if sampler.keep(frame):
                planned[frame.topic] += 1
                if len(sample) < timed_frames:
                    sample.append(frame)
        total = sum(planned.values())
        runtime = load_runtime(options.model, options.backend, log)
        model = model_id(runtime.manifest, runtime.export_dir)
        annotator = Annotator(runtime, tasks, model, options.out_dir)
        times = []
        for i, frame in enumerate(sample):
            seen = read_frame(frame)
            if seen.rgb is None:
                continue
            t0 = time.perf_counter()
            for _ in annotator.records(frame, seen, [q.id for q in tasks.questions]):
                pass
            if i or len(sample) == 1:
                times.append(time.perf_counter() - t0)
        per_frame = statistics.median(times) if times else None
        edits_planned = sum(-(-n // e.every_n) for n in planned.values() for e in tasks.edits)
        edit_s = None
        if tasks.edits and sample:
            seen = read_frame(sample[0])
            if seen.rgb is not None:
                t0 = time.perf_counter()
                runtime.edit_frame(
                    runtime.frame(seen.rgb), tasks.edits[0].instruction, steps=tasks.edits[0].steps
                )
                edit_s = time.perf_counter() - t0
        estimate = None if per_frame is None else per_frame * total + (edit_s or 0.0) * edits_planned
        return {
            "inputs": [str(p) for p in options.inputs],
            "topics": rows,
            "selected": topics,
            "planned_frames": planned,
            "planned_total": total,
            "tasks": list(tasks.ids),
            "records_planned": total * len(tasks.questions) + edits_planned,
            "model": model,
            "backend": options.backend,
            "timed_frames": len(times),
            "seconds_per_frame": None if per_frame is None else round(per_frame, 4),
            "seconds_per_edit": None if edit_s is None else round(edit_s, 3),
            "estimated_seconds": None if estimate is None else round(estimate, 1),
            "notes": inputs.notes,
            "problems": inputs.problems,
        }
