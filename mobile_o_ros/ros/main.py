"""``main()`` of the Mobile-O node process (``ros2 run mobile_o_ros mobile_o_node``, ``mobile-o serve``).

rclpy init → :class:`~mobile_o_ros.ros.mobile_o_node.MobileONode` → configure + activate when
``autostart`` is true → MultiThreadedExecutor spin → clean exit on SIGINT/SIGTERM (queued jobs are
cancelled, the model is freed on its worker thread, the node destroyed).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rclpy.lifecycle import LifecycleNode

TAG = "[mobile_o]"


def executor_threads(max_queue: int) -> int:
    """Executor threads: every waiting request holds one, plus room for frames, cancels and timers."""
    return max(16, 2 * int(max_queue) + 12)


def autostart(node: LifecycleNode) -> bool:
    """Configure then activate ``node``; True when it ends up active (failures are logged by the node)."""
    from rclpy.lifecycle import TransitionCallbackReturn

    log = node.get_logger()
    if node.trigger_configure() != TransitionCallbackReturn.SUCCESS:
        log.error(
            f"{TAG} autostart: configure failed; the node stays unconfigured (fix the parameters, then "
            f"ros2 lifecycle set {node.get_fully_qualified_name()} configure)"
        )
        return False
    return node.trigger_activate() == TransitionCallbackReturn.SUCCESS


def spin_until_shutdown(executor: Any) -> None:
    """``executor.spin()``, except that an error raised because the context went down ends it like the
    shutdown it is: a SIGINT/SIGTERM that lands between rclpy's ``ok()`` check and its wait set makes
    ``spin_once`` raise ``RCLError`` (the given context is not valid) instead of returning."""
    from rclpy.executors import ExternalShutdownException

    while True:
        try:
            executor.spin_once()
        except ExternalShutdownException:
            return
        except Exception:
            if executor.context.ok():
                raise
            return
        if not executor.context.ok():
            return


def main(args: Sequence[str] | None = None) -> int:
    """Run the node until SIGINT/SIGTERM; ``args`` is a full argv (``[prog, '--ros-args', ...]``)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor

    from mobile_o_ros.ros.mobile_o_node import MobileONode

    rclpy.init(args=list(args) if args is not None else sys.argv)
    node = None
    try:
        node = MobileONode()
        node.exit_when_finalized = True
        log = node.get_logger()
        if node.get_parameter("autostart").value:
            autostart(node)
        else:
            log.info(
                f"{TAG} autostart is false: waiting for a lifecycle manager (ros2 lifecycle set "
                f"{node.get_fully_qualified_name()} configure)"
            )
        executor = MultiThreadedExecutor(num_threads=executor_threads(node.get_parameter("max_queue").value))
        executor.add_node(node)
        try:
            spin_until_shutdown(executor)
        finally:
            executor.shutdown(timeout_sec=1.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.say("info", "Exiting: cancelling jobs and freeing the model")
            node.release()
            with contextlib.suppress(Exception):  # already destroyed when the context went down first
                node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
