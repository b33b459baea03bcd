"""Field annotation: typed answers about every frame of rosbag2 recordings and image folders.

Modules: :mod:`~mobile_o_ros.annotate.decode` (camera messages to RGB, shared with the ROS node),
:mod:`~mobile_o_ros.annotate.tasks` (the tasks file and typed readings),
:mod:`~mobile_o_ros.annotate.sources` (streaming reads of bags and folders),
:mod:`~mobile_o_ros.annotate.writer` (the JSONL checkpoint and the outputs rebuilt from it),
:mod:`~mobile_o_ros.annotate.run` (the loop, resume and signals),
:mod:`~mobile_o_ros.annotate.fieldbag` (a synthetic field recording with known truth) and
:mod:`~mobile_o_ros.annotate.cli` (the ``annotate`` and ``make-field-bag`` verbs). None imports torch.
"""
