"""The node's cameras: one subscription per ``camera_topics`` entry, the latest frame of each, decoded on use.

Frames are kept raw (``sensor_msgs/Image`` or ``CompressedImage``) and converted by
:mod:`mobile_o_ros.ros.images` only when a request or the continuous question uses one.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from mobile_o_ros.ros import images
from mobile_o_ros.ros.rclpy_compat import subscription_event_callbacks
from mobile_o_ros.ros.state import TAG, NodeState
from mobile_o_ros.validation import InvalidRequest


@dataclass
class Frame:
    """The latest message of one camera (kept raw; converted when a request uses it)."""

    msg: Any
    received: float  # time.monotonic()
    count: int


class Cameras:
    """Camera subscriptions of ``node`` (made at activate, dropped at deactivate) and their latest frames."""

    def __init__(self, node: Any, state: NodeState, group: Any) -> None:
        self._node = node
        self._state = state
        self._group = group
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self._subs: list[Any] = []

    def topic(self, camera: str) -> str:
        """The topic subscribed for ``camera`` (``<camera>/compressed`` with ``use_compressed``)."""
        return camera.rstrip("/") + "/compressed" if self._state.cfg.use_compressed else camera

    def subscribe(self) -> None:
        """Subscribe to every camera with the configured reliability and depth."""
        cfg = self._state.cfg
        reliability = (
            ReliabilityPolicy.RELIABLE
            if cfg.image_reliability == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            depth=int(cfg.image_qos_depth), reliability=reliability, history=HistoryPolicy.KEEP_LAST
        )
        msg_type = CompressedImage if cfg.use_compressed else Image
        for camera in cfg.camera_topics:
            topic = self.topic(camera)
            events = subscription_event_callbacks(
                incompatible_qos=lambda info, t=topic: self._on_incompatible_qos(t, info)
            )
            sub = self._node.create_subscription(
                msg_type,
                topic,
                lambda msg, c=camera: self._on_frame(c, msg),
                qos,
                callback_group=self._group,
                event_callbacks=events,
            )
            self._subs.append(sub)
            self._node.get_logger().info(
                f"{TAG} Subscribed to {sub.topic_name} ({msg_type.__name__}, "
                f"{cfg.image_reliability}, depth {cfg.image_qos_depth})"
            )

    def unsubscribe(self) -> None:
        """Drop the subscriptions and the kept frames."""
        subs, self._subs = self._subs, []
        for sub in subs:
            self._node.destroy_subscription(sub)
        with self._lock:
            self._frames.clear()

    def frames(self) -> dict[str, Frame]:
        """A snapshot of the latest frame per camera (cameras with none are absent)."""
        with self._lock:
            return dict(self._frames)

    def _on_incompatible_qos(self, topic: str, info: Any) -> None:
        try:
            from rclpy.qos import qos_policy_name_from_kind

            policy = qos_policy_name_from_kind(info.last_policy_kind)
        except Exception:
            policy = str(info.last_policy_kind)
        cfg = self._state.cfg
        self._node.get_logger().warning(
            f"{TAG} Incompatible QoS on {topic}: a publisher does not offer the requested {policy} "
            f"(we request {cfg.image_reliability}, depth {cfg.image_qos_depth}); no frames will "
            "arrive from it. Use image_reliability:=best_effort (it matches any publisher)."
        )

    def _on_frame(self, camera: str, msg: Any) -> None:
        """Keep only the latest frame per camera; conversion happens when a request uses it."""
        with self._lock:
            prev = self._frames.get(camera)
            self._frames[camera] = Frame(msg, time.monotonic(), 1 if prev is None else prev.count + 1)

    def resolve(self, camera: str) -> str:
        """The ``camera_topics`` entry that ``camera`` names (empty = the first), or InvalidRequest."""
        cameras = list(self._state.cfg.camera_topics)
        name = camera.strip()
        if not name:
            return cameras[0]
        if name in cameras:
            return name
        for c in cameras:  # also accept the resolved name ('/mobile_o/camera' for 'camera')
            try:
                if self._node.resolve_topic_name(c) == self._node.resolve_topic_name(name):
                    return c
            except Exception:
                continue
        raise InvalidRequest(f"unknown camera {camera!r}; cameras: {', '.join(cameras)}")

    def latest_frame(self, camera: str) -> tuple[Frame, str]:
        """(the latest frame, still raw, camera) of ``camera``, or InvalidRequest (none yet, or older than
        ``max_frame_age_s``)."""
        cam = self.resolve(camera)
        with self._lock:
            frame = self._frames.get(cam)
        if frame is None:
            raise InvalidRequest(f"no frame received yet on camera {cam!r} (topic {self.topic(cam)})")
        age = time.monotonic() - frame.received
        max_age = float(self._state.cfg.max_frame_age_s)
        if max_age > 0 and age > max_age:
            raise InvalidRequest(
                f"latest frame on camera {cam!r} is {age:.1f} s old (max_frame_age_s {max_age:g})"
            )
        return frame, cam

    @staticmethod
    def pixels(frame: Frame, camera: str) -> np.ndarray:
        """The RGB pixels of a frame of ``camera``, or InvalidRequest (it cannot be decoded)."""
        return images.to_rgb_any(frame.msg, f"frame from camera {camera!r}")

    def latest(self, camera: str) -> tuple[np.ndarray, Any, str]:
        """(RGB pixels, header, camera) of a camera's latest frame, or InvalidRequest."""
        frame, cam = self.latest_frame(camera)
        return self.pixels(frame, cam), frame.msg.header, cam

    def source_image(self, inline: Any, camera: str) -> tuple[np.ndarray, Any, str]:
        """The request's inline image when it carries one, else the camera's latest frame."""
        if not images.is_empty_image(inline):
            return images.image_to_rgb(inline, "inline image"), inline.header, ""
        return self.latest(camera)
