"""A ``MobileOClient`` that is never closed still lets its Python process exit cleanly.

``mobile-o serve`` runs the tiny export; each of ten fresh Python processes builds a client, asks one short
question about an image it sends, and exits without ``close()`` or ``with``. Every process must exit 0 (an
rclpy spin thread still inside rcl at interpreter teardown aborts with exit 134).
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ros, pytest.mark.timeout(600)]

pytest.importorskip("rclpy", reason="rclpy not importable (source scripts/env.sh)")
pytest.importorskip("mobile_o_ros.srv", reason="generated interfaces missing (make setup)")

from mobile_o_ros.ros.testing import LOOPBACK_ENV, ServerProcess, domain_id  # noqa: E402

MODULE_INDEX = 6
DOMAIN = domain_id(MODULE_INDEX)
NS = f"/mo_exit_{uuid.uuid4().hex[:6]}"
RUNS = 10

#: The README's unclosed client: one call, then the interpreter exits with the client still spinning.
SCRIPT = """
import sys
import numpy as np
from mobile_o_ros.client import MobileOClient

client = MobileOClient(sys.argv[1], wait_timeout=30.0)
response = client.ask("what colour?", image=np.zeros((32, 32, 3), np.uint8), max_new_tokens=2, timeout=60)
print("success", response.success)
"""


@pytest.fixture(scope="module")
def server(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory):
    params = {"max_new_tokens": 2, "busy_policy": "queue", "max_queue": 4}
    srv = ServerProcess(tiny_export, NS, DOMAIN, params, tmp_path_factory.mktemp("exit_server"))
    srv.start()
    try:
        assert srv.wait_for_log("[mobile_o] Activated", 90), srv.log()
        yield srv
    finally:
        srv.stop()


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
