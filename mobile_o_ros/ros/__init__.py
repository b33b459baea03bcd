"""The ROS 2 layer of Mobile-O: the lifecycle node, its worker thread, image conversion, parameters, CLI.

Only :mod:`mobile_o_ros.ros.worker` and :mod:`mobile_o_ros.ros.params` import without rclpy; the other
modules need a sourced ROS 2 environment (``. scripts/env.sh``).
"""
