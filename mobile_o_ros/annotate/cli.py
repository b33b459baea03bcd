"""``mobile-o annotate`` and ``mobile-o make-field-bag``: :func:`add_parsers` registers both on the main
parser's subparsers; the verbs import what they need when they run."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mobile_o_ros.errors import CliError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0 or value != value or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
        return value

    return parse


def _print_dry_run(report: dict[str, Any]) -> None:
    print(f"{'topic':<40} {'type':<34} {'messages':>8}  {'encoding':<28} planned")
    for row in report["topics"]:
        planned = report["planned_frames"].get(row["topic"], "") if row["selected"] else "-"
        print(f"{row['topic']:<40} {row['type']:<34} {row['count']:>8}  {row['encoding']:<28} {planned}")
    print(
        f"planned: {report['planned_total']} frames x {len(report['tasks'])} tasks "
        f"({', '.join(report['tasks'])}) = {report['records_planned']} records"
    )
    if report["seconds_per_frame"] is not None:
        print(
            f"estimate: {report['seconds_per_frame'] * 1000:.0f} ms per frame (median of "
            f"{report['timed_frames']} timed frames on {report['backend']}, {report['model']}) -> about "
            f"{report['estimated_seconds']:.0f} s"
        )
    else:
        print("estimate: no frame could be decoded to time")
    for line in report["notes"] + report["problems"]:
        print(f"note: {line}")


def cmd_annotate(args: argparse.Namespace) -> int:
    """Annotate recordings or image folders with the tasks of a tasks file."""
    from mobile_o_ros.annotate.run import Options, annotate, dry_run

    if args.rate is not None and args.every_n is not None:
        raise CliError("give --rate or --every-n, not both")
    options = Options(
        inputs=[Path(p) for p in args.inputs],
        tasks_path=Path(args.tasks),
        out_dir=Path(args.out),
        topics=args.topics,
        rate=args.rate,
        every_n=args.every_n,
        start=args.start,
        end=args.end,
        model=args.model,
        backend=args.backend,
        resume=not args.no_resume,
    )
    if args.dry_run:
        report = dry_run(options, _log)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            _print_dry_run(report)
        return 0
    summary = annotate(options, _log)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        fps = summary["frames_per_second"]
        print(
            f"annotated {summary['frames_annotated']} frames ({summary['frames_failed']} failed, "
            f"{summary['frames_resumed']} already done, {summary['frames_skipped']} skipped by sampling), "
            f"{summary['records']} records"
            + (f", {fps:.2f} frames/s" if fps else "")
            + f"; outputs in {options.out_dir} (index.html, annotations.jsonl/.csv, bag/)"
        )
    return 0


def cmd_make_field_bag(args: argparse.Namespace) -> int:
    """Write a synthetic field recording with known truth."""
    from mobile_o_ros.annotate.fieldbag import make_field_bag

    out = Path(args.out)
    if out.exists():
        raise CliError(f"{out} exists; the bag writer needs a new path")
    report = make_field_bag(out, frames=args.frames, rate_hz=args.rate, seed=args.seed, storage=args.storage)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(
            f"wrote {out}: {report['storage']} storage, {report['frames']} camera frames on "
            f"{', '.join(report['cameras'])} ({report['corrupt']} corrupt), {report['other_messages']} "
            f"messages on {report['other_topic']}; truth in {out / 'truth.jsonl'}, tasks in "
            f"{out / 'tasks.yaml'}"
        )
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``annotate`` and ``make-field-bag``."""
    p = sub.add_parser(
        "annotate",
        help="answer a tasks file's questions about every frame of recordings or image folders",
        description="Annotate rosbag2 recordings (folders, .mcap, .db3), ROS 1 bags or image folders: every "
        "sampled camera frame gets one record per task in OUT/annotations.jsonl (the checkpoint: the same "
        "command resumes), then annotations.csv, an MCAP bag of FrameAnnotation messages, index.html and "
        "summary.json.",
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="rosbag2 folder, .mcap/.db3/.bag file or image folder"
    )
    p.add_argument(
        "--tasks", required=True, metavar="TASKS.yaml", help="what to ask (caption, questions, edits)"
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="output folder (created; resumed when it holds a run)"
    )
    p.add_argument(
        "--topics", nargs="+", metavar="PATTERN", help="image topics to read (globs; default: all)"
    )
    p.add_argument(
        "--rate", type=_positive(float), metavar="HZ", help="at most this many frames/s per topic (bag time)"
    )
    p.add_argument("--every-n", type=_positive(int), metavar="N", help="every N-th frame of each topic")
    p.add_argument(
        "--start", metavar="T", help="bag time to start at: seconds, or +seconds after the first message"
    )
    p.add_argument(
        "--end", metavar="T", help="bag time to stop before: seconds, or +seconds after the first message"
    )
    p.add_argument("--model", default=None, help="checkpoint or export folder (default: the embedded model)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    p.add_argument(
        "--dry-run", action="store_true", help="list topics and planned frames, time a few; write nothing"
    )
    p.add_argument("--no-resume", action="store_true", help="refuse an output folder that is not empty")
    p.add_argument("--json", action="store_true", help="print the summary (or the dry run) as JSON")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser(
        "make-field-bag",
        help="write a synthetic two-camera field recording with known truth (shapes world)",
    )
    p.add_argument("out", metavar="OUT", help="the rosbag2 folder to create")
    p.add_argument("--frames", type=_positive(int), default=24, help="frames per camera (default 24)")
    p.add_argument("--rate", type=_positive(float), default=5.0, help="camera rate in Hz (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_make_field_bag)
