"""Test support for the ROS tests: a ``mobile-o serve`` subprocess and an rclpy context on its own domain.

Imported by ``test/test_ros_*.py`` and the other DDS tests (pytest puts ``test/`` on ``sys.path``);
importable without rclpy (rclpy is imported by :class:`RosSide`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

#: Environment of the server and of the test process: loopback discovery only.
LOOPBACK_ENV = {
    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    "RCUTILS_COLORIZED_OUTPUT": "0",
    "RCUTILS_LOGGING_BUFFERED_STREAM": "0",
    "PYTHONUNBUFFERED": "1",
}


def domain_id(module_index: int) -> int:
    """A ROS_DOMAIN_ID in [1, 100] that differs per test module and per pytest process."""
    return 1 + (os.getpid() * 7 + module_index * 29) % 100


def serve_command() -> list[str]:
    """The ``mobile-o`` entry point as this interpreter runs it: ``python -m mobile_o_ros``."""
    return [sys.executable, "-m", "mobile_o_ros"]


class ServerProcess:
    """``mobile-o serve`` in its own process, with a params file; always stopped by :meth:`stop`."""

    def __init__(
        self,
        model_dir: str | Path,
        namespace: str,
        domain: int,
        parameters: dict[str, Any],
        workdir: Path,
        extra_args: list[str] | None = None,
    ) -> None:
        self.model_dir = str(model_dir)
        self.namespace = namespace
        self.domain = domain
        self.parameters = parameters
        self.workdir = Path(workdir)
        self.extra_args = list(extra_args or [])
        self.log_path = self.workdir / "server.log"
        self.params_path = self.workdir / "params.yaml"
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    def env(self) -> dict[str, str]:
        """The server's environment: ours, plus the domain and loopback discovery."""
        env = dict(os.environ)
        env.update(LOOPBACK_ENV)
        env["ROS_DOMAIN_ID"] = str(self.domain)
        return env

    def start(self) -> None:
        """Write the params file and start the process (output goes to ``server.log``)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.params_path.write_text(yaml.safe_dump({"/**": {"ros__parameters": self.parameters}}))
        cmd = [
            *serve_command(),
            "serve",
            "--model-dir",
            self.model_dir,
            "--backend",
            "onnxruntime",
            "--params",
            str(self.params_path),
            "--namespace",
            self.namespace,
            *self.extra_args,
        ]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env=self.env(), cwd=str(self.workdir)
        )

    def log(self) -> str:
        """Everything the server printed so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_log(self, text: str, timeout: float = 30.0, start: int = 0) -> bool:
        """True once ``text`` appears in the log after character ``start``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log()[start:]:
                return True
            if self.proc is not None and self.proc.poll() is not None:
                return text in self.log()[start:]
            time.sleep(0.05)
        return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the process, wait ``timeout`` s, kill it if it hangs; return its exit code (-9 = killed)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.returncode = self.proc.returncode
        self._log.close()
        return int(self.returncode)


@contextlib.contextmanager
def running_server(
    model_dir: str | Path,
    namespace: str,
    domain: int,
    parameters: dict[str, Any],
    workdir: Path,
    extra_args: list[str] | None = None,
    timeout: float = 90.0,
) -> Iterator[ServerProcess]:
    """A :class:`ServerProcess` started and active (its log in the assertion when it does not come up),
    stopped on exit."""
    srv = ServerProcess(model_dir, namespace, domain, parameters, workdir, extra_args)
    srv.start()
    try:
        assert srv.wait_for_log("[mobile_o] Activated", timeout), srv.log()
        yield srv
    finally:
        srv.stop()


class RosSide:
    """The test process's ROS side: a Context on ``domain``, one helper node, an executor thread."""

    def __init__(self, domain: int, name: str = "mobile_o_test") -> None:
        import rclpy
        from rclpy.executors import MultiThreadedExecutor

        for k, v in LOOPBACK_ENV.items():
            os.environ.setdefault(k, v)
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain)
        self.node = rclpy.create_node(f"{name}_{os.getpid()}", context=self.context)
        self.executor = MultiThreadedExecutor(num_threads=8, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        with contextlib.suppress(Exception):  # context shut down
            self.executor.spin()

    def collect(self, msg_type: Any, topic: str, qos: Any = 10) -> list[Any]:
        """Subscribe and append every message (with its receive time) to the returned list."""
        out: list[Any] = []
        self.node.create_subscription(msg_type, topic, lambda m: out.append((time.monotonic(), m)), qos)
        return out

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 30.0) -> Any:
        """Call a service from the helper node and wait."""
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            event = threading.Event()
            future.add_done_callback(lambda _f: event.set())
            if not event.wait(timeout):
                raise TimeoutError(f"no response from {name}")
            return future.result()
        finally:
            self.node.destroy_client(client)

    @contextlib.contextmanager
    def client(self, namespace: str, wait: float = 30.0) -> Iterator[Any]:
        """A ``MobileOClient`` for the node under ``namespace`` on this context, its services up; closed on
        exit."""
        from mobile_o_ros.ros.client import MobileOClient

        with MobileOClient(namespace, context=self.context, wait_timeout=wait) as client:
            assert client.wait_for_services(wait), f"the services under {namespace} did not appear"
            yield client

    def __enter__(self) -> RosSide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the executor and shut the context down."""
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()
        self._thread.join(5.0)


def wait_until(pred: Callable[[], bool], timeout: float, period: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(period)
    return bool(pred())


def report_metrics(module: str, metrics: dict[str, Any]) -> None:
    """Print a test module's figures as one JSON line, and append it to ``$MOBILE_O_ROS_METRICS`` if set."""
    line = json.dumps({"module": module, **metrics})
    print("\nROS metrics:", line)
    if os.environ.get("MOBILE_O_ROS_METRICS"):
        with open(os.environ["MOBILE_O_ROS_METRICS"], "a") as f:
            f.write(line + "\n")
