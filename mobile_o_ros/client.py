"""The Mobile-O ROS 2 client under its older import path; it lives in :mod:`mobile_o_ros.ros.client`."""

from mobile_o_ros.ros.client import *  # noqa: F403
from mobile_o_ros.ros.client import __all__  # noqa: F401
