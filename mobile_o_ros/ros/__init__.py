"""The ROS 2 layer of Mobile-O: the lifecycle node and its parts, its worker thread, the client, the CLI.

:mod:`~mobile_o_ros.ros.mobile_o_node` wires the node's parts (``frames``, ``warm``, ``requests``,
``goals``, ``continuous``, ``annotations``, ``diagnostics``); :mod:`~mobile_o_ros.ros.client` is the Python
client. ``worker``, ``params``, ``state``, ``outcomes`` and ``rclpy_compat`` import without rclpy; the other
modules need a sourced ROS 2 environment (``. scripts/env.sh``).
"""
