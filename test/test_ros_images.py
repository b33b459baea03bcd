"""Unit tests of sensor_msgs ↔ numpy conversion (real sensor_msgs messages, no node)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("sensor_msgs.msg", reason="ROS 2 messages not importable (source scripts/env.sh)")

from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from mobile_o_ros.ros import images
from mobile_o_ros.validation import InvalidRequest

pytestmark = pytest.mark.ros

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)


def _header() -> Header:
    h = Header(frame_id="cam_optical")
    h.stamp.sec, h.stamp.nanosec = 1234, 5678
    return h


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_colour_encodings_round_trip(encoding: str, pad: int) -> None:
    pixels = {
        "rgb8": RGB,
        "bgr8": RGB[:, :, ::-1],
        "rgba8": np.dstack([RGB, np.full(RGB.shape[:2], 9, np.uint8)]),
        "bgra8": np.dstack([RGB[:, :, ::-1], np.full(RGB.shape[:2], 9, np.uint8)]),
    }[encoding]
    msg = images.array_to_image(pixels, encoding, _header(), pad=pad)
    assert msg.step == 5 * images.CHANNELS[encoding] + pad
    out = images.image_to_rgb(msg)
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, RGB)


def test_mono8_with_row_padding() -> None:
    gray = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    msg = images.array_to_image(gray, "mono8", pad=2)
    np.testing.assert_array_equal(images.image_to_rgb(msg), np.repeat(gray[:, :, None], 3, axis=2))


def test_is_bigendian_is_irrelevant_for_8_bit() -> None:
    msg = images.array_to_image(RGB[:, :, ::-1], "bgr8")
    msg.is_bigendian = 1
    np.testing.assert_array_equal(images.image_to_rgb(msg), RGB)


def test_encoding_is_case_insensitive() -> None:
    msg = images.array_to_image(RGB, "rgb8")
    msg.encoding = "RGB8"
    np.testing.assert_array_equal(images.image_to_rgb(msg), RGB)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda m: setattr(m, "encoding", "h264"), "unsupported image encoding 'h264'"),
        (lambda m: setattr(m, "encoding", "32FC3"), "unsupported image encoding '32FC3'"),
        (lambda m: setattr(m, "encoding", ""), "unsupported image encoding ''"),
        (lambda m: setattr(m, "width", 0), r"zero-size image \(0x7\)"),
        (lambda m: setattr(m, "height", 0), r"zero-size image \(5x0\)"),
        (lambda m: setattr(m, "step", 14), "step 14 is shorter than a row"),
        (
            lambda m: setattr(m, "data", bytes(10)),
            r"data length 10 does not match height\*step = 7\*15 = 105",
        ),
        (lambda m: setattr(m, "height", 8), r"data length 105 does not match height\*step = 8\*15 = 120"),
    ],
)
def test_bad_images_are_refused_with_a_reason(mutate, match: str) -> None:
    msg = images.array_to_image(RGB, "rgb8")
    mutate(msg)
    with pytest.raises(InvalidRequest, match=match):
        images.image_to_rgb(msg)


def test_empty_image_means_no_inline_image() -> None:
    assert images.is_empty_image(Image())
    assert not images.is_empty_image(images.array_to_image(RGB, "rgb8"))
    zero = Image(encoding="rgb8")  # an encoding but no pixels: an (invalid) inline image
    assert not images.is_empty_image(zero)
    with pytest.raises(InvalidRequest, match="zero-size"):
        images.image_to_rgb(zero, "inline image")


@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_compressed_decode(fmt: str) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 30, 10)
    msg = images.rgb_to_compressed(rgb, fmt, _header())
    out = images.compressed_to_rgb(msg)
    assert out.shape == rgb.shape
    if fmt == "png":
        np.testing.assert_array_equal(out, rgb)
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 4
    assert images.to_rgb_any(msg).shape == rgb.shape  # dispatch on the message type


def test_compressed_grey_png_becomes_rgb() -> None:
    ok, buf = cv2.imencode(".png", np.full((3, 4), 77, np.uint8))
    assert ok
    out = images.compressed_to_rgb(CompressedImage(format="png", data=buf.tobytes()))
    assert out.shape == (3, 4, 3) and (out == 77).all()


def test_compressed_garbage_and_empty_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="cannot decode compressed image"):
        images.compressed_to_rgb(CompressedImage(format="jpeg", data=b"not a jpeg"))
    with pytest.raises(InvalidRequest, match="empty compressed image"):
        images.compressed_to_rgb(CompressedImage(format="jpeg"))


def test_rgb_to_image_copies_the_header() -> None:
    msg = images.rgb_to_image(RGB, _header())
    assert (msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian) == ("rgb8", 7, 5, 15, 0)
    assert msg.header.frame_id == "cam_optical" and msg.header.stamp.sec == 1234
    assert msg.header.stamp.nanosec == 5678
    np.testing.assert_array_equal(images.image_to_rgb(msg), RGB)


BLOCKS = np.kron(RNG.integers(0, 256, (3, 4, 3), dtype=np.uint8), np.ones((8, 8, 1), np.uint8))
INTERIOR = np.zeros(BLOCKS.shape[:2], bool)
for _y in range(3):
    for _x in range(4):
        INTERIOR[_y * 8 + 2 : _y * 8 + 6, _x * 8 + 2 : _x * 8 + 6] = True


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize(
    "encoding", ["yuv422", "uyvy", "yuyv", "bayer_rggb8", "bayer_grbg8", "bayer_gbrg16", "rgb16", "nv12"]
)
def test_camera_encodings_the_node_accepts(encoding: str, bigendian: bool) -> None:
    """usb_cam's yuv422, machine-vision bayer, 16-bit colour: within 1 level inside flat regions."""
    msg = images.rgb_to_raw(BLOCKS, encoding, _header(), pad=6, bigendian=bigendian)
    out = images.to_rgb_any(msg)
    assert out.shape == BLOCKS.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - BLOCKS)[INTERIOR].max() <= 1


@pytest.mark.parametrize("encoding", ["mono16", "16UC1"])
def test_thermal_and_depth_are_stretched_to_8_bit(encoding: str) -> None:
    """A thermal camera's mono16 uses a narrow band of the range: min..max becomes 0..255."""
    raw = np.linspace(29000, 29400, 6 * 5, dtype=np.uint16).reshape(6, 5)
    msg = images.array_to_image(raw, encoding, pad=4)
    out = images.image_to_rgb(msg)
    assert out[0, 0].tolist() == [0, 0, 0] and out[-1, -1].tolist() == [255, 255, 255]
    assert (np.diff(out[:, :, 0].reshape(-1).astype(int)) >= 0).all()


@pytest.mark.parametrize(
    ("fmt", "stored"),
    [
        ("bgr8; jpeg compressed bgr8", "bgr"),
        ("rgb8; jpeg compressed bgr8", "bgr"),
        ("rgb8; png compressed rgb8", "rgb"),
        ("jpg", "bgr"),
        ("", "bgr"),
        ("PNG", "bgr"),
    ],
)
def test_compressed_format_strings(fmt: str, stored: str) -> None:
    rgb = np.zeros((16, 24, 3), np.uint8)
    rgb[:, :12] = (200, 30, 10)
    pixels = rgb if stored == "rgb" else rgb[:, :, ::-1]
    ok, buf = cv2.imencode(
        ".png" if "png" in fmt.lower() or not fmt else ".jpg", np.ascontiguousarray(pixels)
    )
    assert ok
    out = images.compressed_to_rgb(CompressedImage(format=fmt, data=buf.tobytes()))
    assert np.abs(out.astype(int) - rgb).mean() < 4


def test_compressed_depth_is_refused() -> None:
    _, buf = cv2.imencode(".png", np.zeros((4, 4), np.uint16))
    msg = CompressedImage(format="16UC1; compressedDepth png", data=bytes(12) + buf.tobytes())
    with pytest.raises(InvalidRequest, match="compressedDepth depth map"):
        images.to_rgb_any(msg)
