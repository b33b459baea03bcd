"""``mobile-o draw-scene``: a picture of the shapes world, from a caption or a seed, to try the model on.

The embedded model only knows the world's own colours, sizes and positions; a scene drawn here is one it
can read. The verb prints the scene's caption and one question per category with its answer.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from mobile_o_ros.errors import CliError
from mobile_o_ros.shapes import world


def draw_scene(caption: str | None, seed: int | None, size: int) -> tuple[world.Scene, object]:
    """The scene (parsed from ``caption`` or made from held-out ``seed``) and its RGB render."""
    if caption is not None:
        scene = world.parse_caption(caption)
    else:
        scene = world.make_scene(world.HELDOUT_SEED_BASE + int(seed or 0))
    return scene, world.render(scene, size)


def cmd_draw_scene(args: argparse.Namespace) -> int:
    """Write the scene's PNG and print its caption and questions."""
    import cv2

    if args.caption is not None and args.seed is not None:
        raise CliError("give a CAPTION or --seed N, not both")
    if args.seed is not None and args.seed < 0:
        raise CliError(f"--seed must be >= 0, got {args.seed}")
    if not 64 <= args.size <= 4096:
        raise CliError(f"--size must be in [64, 4096], got {args.size}")
    try:
        scene, rgb = draw_scene(args.caption, args.seed, args.size)
    except ValueError as err:
        raise CliError(str(err)) from err
    out = Path(args.output)
    if out.is_dir():
        raise CliError(f"output is a folder: {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise CliError(f"cannot write image: {out}")
    asked = world.questions(scene, random.Random(0))
    report = {
        "output": str(out),
        "caption": world.caption(scene),
        "questions": [{"question": q.question, "answer": q.answer} for q in asked],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"wrote {out}: {report['caption']}")
        for q in report["questions"]:
            print(f"  {q['question']:<40} {q['answer']}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``draw-scene`` on the main parser's subparsers."""
    p = subparsers.add_parser(
        "draw-scene",
        help="draw a shapes-world scene (from a caption or a seed) that the embedded model can read",
    )
    p.add_argument(
        "caption",
        nargs="?",
        default=None,
        help="e.g. 'a large red circle on the left and a small blue square at the top, on a grey background'",
    )
    p.add_argument("--seed", type=int, default=None, help="a held-out scene of this seed instead")
    p.add_argument("--size", type=int, default=512, help="side in pixels (default 512)")
    p.add_argument("-o", "--output", required=True, help="output PNG path")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_draw_scene)
