"""mobile_o_ros: Mobile-O (unified VLM + diffusion) as a ROS 2 component.

Two tiers: ``mobile_o_ros.reference`` (export tier: PyTorch reference model, loader, ONNX export) and
``mobile_o_ros.runtime`` (robot tier: numpy host logic and engine backends; never imports torch).
Importing this package imports neither.
"""

__version__ = "0.1.0"
