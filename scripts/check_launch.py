"""Run launch/mobile_o.launch.py through ``launch.LaunchService`` and check the node it starts.

    scripts/check_launch.sh SRC_DIR [DISTRO ...]      (the wrapper: one run per distro's venv)

There are no wheels of ``launch`` and ``launch_ros``, so this is not part of the test suite: it needs their
pure-Python sources (ros2/launch, ros2/launch_ros, osrf/osrf_pycommon) on PYTHONPATH, which
check_launch.sh puts there. Run it whenever the launch file changes.

``check`` (the default) writes a params file, starts ``launch`` (this script's other mode) in a
process of its own with every launch argument set (namespace, params_file, model_dir, camera_topics,
use_compressed), then checks over DDS that the node is active, holds the arguments' values and the params
file's, subscribes the cameras' compressed topics and answers a question; then it sends SIGINT to the
launch process and expects it to end with status 0. Every check prints one line; the exit status is 1 if
any failed.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / "launch" / "mobile_o.launch.py"


def run_launch(arguments: dict[str, str]) -> int:
    """Include the launch file with ``arguments`` and run it until SIGINT; LaunchService's status."""
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    from launch import LaunchDescription, LaunchService

    service = LaunchService()
    service.include_launch_description(
        LaunchDescription(
            [
                IncludeLaunchDescription(
                    PythonLaunchDescriptionSource(str(LAUNCH_FILE)), launch_arguments=arguments.items()
                )
            ]
        )
    )
    return service.run()


class Checks:
    """Collects named pass/fail lines."""

    def __init__(self) -> None:
        self.failed = 0

    def check(self, name: str, ok: bool, detail: Any = "") -> bool:
        """Print one line; remember a failure."""
        print(f"  {'ok  ' if ok else 'FAIL'} {name}{f': {detail}' if detail != '' else ''}", flush=True)
        self.failed += not ok
        return ok


def _call(node: Any, srv_type: Any, name: str, request: Any, timeout: float) -> Any:
    """Call a service from ``node`` (spun here); None when it is not there or does not answer."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    client = node.create_client(srv_type, name)
    try:
        if not client.wait_for_service(timeout_sec=timeout):
            return None
        future = client.call_async(request)
        executor = SingleThreadedExecutor(context=node.context)
        rclpy.spin_until_future_complete(node, future, executor=executor, timeout_sec=timeout)
        return future.result() if future.done() else None
    finally:
        node.destroy_client(client)


def check_node(checks: Checks, ns: str, expected: dict[str, Any], cameras: list[str]) -> None:
    """The node under ``ns`` is active, holds ``expected`` parameter values, subscribes ``cameras``
    and answers a question."""
    import numpy as np
    import rclpy
    from lifecycle_msgs.srv import GetState
    from rcl_interfaces.srv import GetParameters
    from rclpy.parameter import parameter_value_to_python

    from mobile_o_ros.ros.client import MobileOClient

    fqn = f"{ns}/mobile_o"
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node(f"launch_check_{os.getpid()}", context=context)
    try:
        state, deadline = None, time.monotonic() + 120
        while time.monotonic() < deadline:
            response = _call(node, GetState, f"{fqn}/get_state", GetState.Request(), 5.0)
            state = response.current_state.label if response else None
            if state == "active":
                break
            time.sleep(0.5)
        checks.check(f"{fqn} is active (autostart)", state == "active", state)

        response = _call(
            node, GetParameters, f"{fqn}/get_parameters", GetParameters.Request(names=list(expected)), 10.0
        )
        values = [parameter_value_to_python(v) for v in response.values] if response else []
        got = dict(zip(expected, values, strict=False))
        for name, want in expected.items():
            checks.check(f"parameter {name} = {want!r}", got.get(name) == want, got.get(name, "not read"))

        deadline = time.monotonic() + 20
        topics: set[str] = set()
        while time.monotonic() < deadline and not set(cameras) <= topics:
            topics = {t for t, _ in node.get_subscriber_names_and_types_by_node("mobile_o", ns)}
            time.sleep(0.5)
        checks.check("subscribes " + ", ".join(cameras), set(cameras) <= topics, sorted(topics))
    finally:
        node.destroy_node()
        rclpy.try_shutdown(context=context)

    client = MobileOClient(namespace=ns, wait_timeout=30.0)
    try:
        image = np.zeros((64, 64, 3), np.uint8)
        image[16:48, 16:48] = (200, 30, 30)
        answer = client.ask("what colour is the square?", image=image, max_new_tokens=3, timeout=120)
        checks.check("ask answers", bool(answer.success), answer.message or answer.answer)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point (``check`` by default; ``launch`` is the child process)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", choices=("check", "launch"), default="check")
    parser.add_argument("--model-dir", help="export folder for model_dir (check mode)")
    parser.add_argument(
        "--arg", action="append", default=[], help="launch argument NAME:=VALUE (launch mode)"
    )
    args = parser.parse_args(argv)
    if args.mode == "launch":
        return run_launch(dict(a.split(":=", 1) for a in args.arg))

    if not args.model_dir or not (Path(args.model_dir) / "manifest.json").is_file():
        parser.error("--model-dir must name an export folder (make tiny-export writes .cache/tiny-export)")
    ns = f"/launch_check_{os.getpid()}"
    cameras = [f"{ns}_cam/front", f"{ns}_cam/rear"]
    checks = Checks()
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "params.yaml"
        from_file = {"autostart": True, "max_new_tokens": 7, "busy_policy": "reject"}
        params_file.write_text(yaml.safe_dump({"/**": {"ros__parameters": from_file}}))
        launch_args = {
            "namespace": ns,
            "params_file": str(params_file),
            "model_dir": str(Path(args.model_dir).resolve()),
            "camera_topics": "['" + "', '".join(cameras) + "']",
            "use_compressed": "true",
        }
        cmd = [sys.executable, __file__, "launch", *(f"--arg={k}:={v}" for k, v in launch_args.items())]
        log_path = Path(tmp) / "launch.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            try:
                expected = {
                    "model_dir": launch_args["model_dir"],
                    "camera_topics": cameras,
                    "use_compressed": True,
                    "max_new_tokens": 7,
                    "busy_policy": "reject",
                    "backend": "onnxruntime",
                }
                check_node(checks, ns, expected, [f"{c}/compressed" for c in cameras])
            finally:
                proc.send_signal(signal.SIGINT)
                try:
                    rc = proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
        checks.check("SIGINT ends the launch with status 0", rc == 0, rc)
        if checks.failed:
            print(
                "  launch output (last 40 lines):\n    "
                + "\n    ".join(log_path.read_text().splitlines()[-40:])
            )
    print(f"launch check: {'failed' if checks.failed else 'passed'}", flush=True)
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
