"""``mobile-o train-demo`` and ``mobile-o selftest``: the verbs of the embedded shapes model.

:func:`add_parsers` registers both on the main parser's subparsers; heavy imports happen inside the verbs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from mobile_o_ros.errors import EXIT_FAILURE, CliError


def cmd_train_demo(args: argparse.Namespace) -> int:
    """Train the shapes model from a seed into OUT_DIR."""
    # Passive OpenMP waiting: on a shared CPU, spinning threads slow training by up to ~10x (measured).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    out = Path(args.out_dir)
    if out.exists() and not out.is_dir():
        raise CliError(f"not a folder: {out}")
    from mobile_o_ros.shapes.train import train_demo

    report = train_demo(
        out,
        seed=args.seed,
        quick=args.quick,
        threads=args.threads,
        log=lambda m: print(m, file=sys.stderr, flush=True),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for name, s in report["stages"].items():
            print(
                f"{name:<12} {s['steps']:>5} steps {s['seconds']:>7.1f} s  loss {s['loss_first']:.4f} -> "
                f"{s['loss_last']:.4f}"
            )
        print(f"total {report['total_seconds']:.0f} s; checkpoint in {out}")
    return 0


def cmd_selftest(args: argparse.Namespace) -> int:
    """Score a model (default: the embedded one) on held-out shapes-world tasks."""
    from mobile_o_ros import model_store, validation
    from mobile_o_ros.checkpoint_files import CheckpointError
    from mobile_o_ros.manifest import ManifestError
    from mobile_o_ros.shapes import selftest

    try:
        if args.steps is not None:
            validation.check_steps(args.steps)
        if args.guidance is not None:
            validation.check_guidance(args.guidance)
    except validation.InvalidRequest as err:
        raise CliError(str(err)) from err
    limits = None
    if args.limit is not None:
        if args.limit < 1:
            raise CliError("--limit must be at least 1")
        limits = {"vqa": args.limit, "generation": args.limit, "editing": args.limit}
    tasks = tuple(args.tasks.split(",")) if args.tasks else ("vqa", "generation", "editing")
    unknown = [t for t in tasks if t not in ("vqa", "generation", "editing")]
    if unknown:
        raise CliError(f"unknown task(s) {', '.join(unknown)} (vqa, generation, editing)")
    try:
        model = model_store.resolve(args.model)
    except model_store.ModelError as err:
        raise CliError(str(err)) from err
    for line in selftest.plan({**selftest.DEFAULT_LIMITS, **(limits or {})}, tasks):
        print(f"selftest: {line}", file=sys.stderr, flush=True)
    progress = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    try:
        pipeline = model_store.load_pipeline(model, args.backend, progress=progress)
    except (model_store.ModelError, ManifestError, CheckpointError) as err:
        raise CliError(str(err)) from err
    save = Path(args.save_images) if args.save_images else None
    result = selftest.run_selftest(
        pipeline, limits, tasks, progress, save, steps=args.steps, guidance_scale=args.guidance
    )
    result["model"] = str(args.model) if args.model else "embedded"
    print(json.dumps(result, indent=2) if args.json else selftest.format_report(result))
    if args.strict and not all(result["meets_targets"].values()):
        return EXIT_FAILURE
    return 0


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register ``train-demo`` and ``selftest`` on the ``mobile-o`` subparsers."""
    p = subparsers.add_parser("train-demo", help="train the embedded shapes model from a seed (CPU)")
    p.add_argument("out_dir", help="checkpoint folder to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="a few steps per stage (smoke test)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads of the main process (default 1: this small model's steps run as fast or "
        "faster on one; a worker process takes the other core: the autoencoder's, then a data-parallel "
        "rank)",
    )
    p.add_argument("--json", action="store_true", help="print the training report as JSON")
    p.set_defaults(func=cmd_train_demo)

    p = subparsers.add_parser(
        "selftest", help="score a model on held-out shapes-world VQA, generation, editing"
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        help="checkpoint or export folder, or a name: embedded (default), tiny-random",
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnxruntime", "tensorrt"),
        default="auto",
        help="auto: torch for a checkpoint folder, onnxruntime for an export folder",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        metavar="N",
        help="items per task: N VQA questions (shared over the 5 question categories), N captions, N edits "
        "(shared over the 3 edit kinds); default 500 / 60 / 60, the model card's sample",
    )
    p.add_argument("--tasks", default=None, help="comma-separated subset of vqa,generation,editing")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's, 20)")
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="CFG scale (default: the model's own; the embedded model's is the reference's 1.5)",
    )
    p.add_argument("--save-images", default=None, help="write a few generated/edited images here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a score is below its target")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_selftest)
