"""What a new user meets over DDS, with `mobile-o serve` on the tiny export (shipping the shapes vocabulary).

- A ``MobileOClient`` that is never closed still lets its Python process exit cleanly: each of ten fresh
  processes builds a client, asks one short question about an image it sends, and exits without ``close()``
  or ``with``; every one must exit 0 (an rclpy spin thread still inside rcl at interpreter teardown aborts
  with exit 134).
- Words of a request the model never saw are named in the response message (success stays true) and in a
  warning in the node's log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(600)]

pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")

from ros_support import LOOPBACK_ENV, ServerProcess, domain_id, running_server  # noqa: E402

MODULE_INDEX = 6
DOMAIN = domain_id(MODULE_INDEX)
NS = f"/mo_exit_{uuid.uuid4().hex[:6]}"
RUNS = 10

#: The README's unclosed client: one call, then the interpreter exits with the client still spinning.
SCRIPT = """
import sys
import numpy as np
from mobile_o_ros.ros.client import MobileOClient

client = MobileOClient(sys.argv[1], wait_timeout=30.0)
response = client.ask("what colour?", image=np.zeros((32, 32, 3), np.uint8), max_new_tokens=2, timeout=60)
print("success", response.success)
"""


@pytest.fixture(scope="module")
def server(vocab_export: Path, tmp_path_factory: pytest.TempPathFactory):
    params = {"max_new_tokens": 2, "busy_policy": "queue", "max_queue": 4, "default_steps": 1}
    with running_server(vocab_export, NS, DOMAIN, params, tmp_path_factory.mktemp("first_use_server")) as srv:
        yield srv


def test_an_unclosed_client_exits_cleanly(server: ServerProcess) -> None:
    env = {**os.environ, **LOOPBACK_ENV, "ROS_DOMAIN_ID": str(DOMAIN)}
    codes = []
    for _ in range(RUNS):
        proc = subprocess.run(
            [sys.executable, "-c", SCRIPT, NS], env=env, capture_output=True, text=True, timeout=120
        )
        assert "success True" in proc.stdout, proc.stdout + proc.stderr
        codes.append((proc.returncode, proc.stderr.strip()[-300:]))
    assert [c for c, _ in codes] == [0] * RUNS, codes


def test_words_the_model_never_saw_are_named_in_the_response(server: ServerProcess) -> None:
    from ros_support import RosSide

    from mobile_o_ros.ros.client import MobileOClient

    ros = RosSide(DOMAIN)
    try:
        with MobileOClient(NS, context=ros.context, wait_timeout=30.0) as client:
            resp = client.generate("a photo of a dog on a beach", steps=1, timeout=60)
            assert resp.success and resp.message.endswith("; the model never saw: photo, of, dog, beach"), (
                resp
            )
            assert "generate: the model never saw: photo, of, dog, beach; it knows: shapes " in server.log()
            image = np.zeros((32, 32, 3), np.uint8)
            resp = client.ask("is there a dog?", image=image, timeout=60)
            assert resp.success and resp.message.endswith("; the model never saw: dog"), resp
            resp = client.edit("make the circle green", image=image, steps=1, timeout=60)
            assert resp.success and "never saw" not in resp.message, resp
    finally:
        ros.close()


def test_mobile_o_ros_prints_the_nodes_note_as_a_warning(server: ServerProcess, tmp_path: Path) -> None:
    env = {**os.environ, **LOOPBACK_ENV, "ROS_DOMAIN_ID": str(DOMAIN)}
    argv = ["ros", "generate", "a dog on a beach", "--out", str(tmp_path / "dog.png"), "--namespace", NS]
    proc = subprocess.run(
        [sys.executable, "-m", "mobile_o_ros", *argv, "--steps", "1", "--wait", "30"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip().splitlines() == ["mobile-o: warning: the model never saw: dog, beach"]
    assert (tmp_path / "dog.png").is_file()
