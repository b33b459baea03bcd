"""Print the versions a test lane runs on, and check that a torch-free lane's venv has no torch.

    python scripts/lane_check.py        (in the lane's environment; the Makefile's test targets run it)

One line: the lane (``MOBILE_O_TEST_LANE``, "main" when unset), Python, numpy, onnxruntime and, where
rclpy is installed, the ROS 2 distro and rclpy. In a lane (``MOBILE_O_TEST_LANE`` set) it exits 1 when
torch, transformers or diffusers is installed in the venv.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from importlib import metadata

#: What the torch-free lanes' venvs must not hold.
HEAVY = ("torch", "transformers", "diffusers")
#: rclpy's major version per distro, for venvs whose ROS wheels came without a ros-<distro>-rclpy meta wheel.
RCLPY_MAJOR_DISTRO = {"3": "humble", "7": "jazzy", "9": "kilted"}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def ros_distro(rclpy_version: str) -> str:
    """The distro of the installed ROS wheels: the ros-<distro>-rclpy meta wheel, else rclpy's major."""
    names = {(d.metadata["Name"] or "").lower() for d in metadata.distributions()}
    metas = sorted(n.split("-")[1] for n in names if re.fullmatch(r"ros-[a-z]+-rclpy", n))
    return "/".join(metas) or RCLPY_MAJOR_DISTRO.get(rclpy_version.split(".")[0], "unknown")


def versions() -> str:
    """The lane's platform in one line."""
    import numpy

    parts = [f"Python {sys.version.split()[0]}", f"numpy {numpy.__version__}"]
    ort = _version("onnxruntime") or _version("onnxruntime-gpu")
    parts.append(f"onnxruntime {ort}" if ort else "onnxruntime: not installed")
    rclpy_version = _version("ros-rclpy")
    if rclpy_version:
        parts += [f"ROS 2 {ros_distro(rclpy_version)}", f"rclpy {rclpy_version}"]
    return ", ".join(parts)


def main() -> int:
    """Entry point."""
    lane = os.environ.get("MOBILE_O_TEST_LANE", "")
    print(f"lane {lane or 'main'}: {versions()}", flush=True)
    if lane:
        present = [m for m in HEAVY if importlib.util.find_spec(m) is not None]
        if present:
            print(f"error: the {lane!r} lane's venv holds {', '.join(present)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
