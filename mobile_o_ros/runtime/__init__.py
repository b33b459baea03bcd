"""Torch-free runtime tier of mobile_o_ros (numpy, tokenizers, OpenCV only; ships to the robot)."""
