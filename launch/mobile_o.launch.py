"""Launch the Mobile-O lifecycle node (run with ROS 2 Jazzy and Kilted by scripts/check_launch.sh; Humble audited).

    ros2 launch mobile_o_ros mobile_o.launch.py model_dir:=/path/to/export
    ros2 launch mobile_o_ros mobile_o.launch.py params_file:=my.yaml camera_topics:="['/front/image_raw']"

The node configures and activates itself when its ``autostart`` parameter is true (the default); set it
to false in the params file to leave activation to a lifecycle manager. Non-empty model_dir, backend,
camera_topics and use_compressed arguments override the params file (``mobile-o serve`` has the same
rules).
"""

import yaml
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.substitutions import FindPackageShare

from launch import LaunchDescription


def _camera_list(text):
    """ "['/a', '/b']" (YAML) or "/a,/b" or "/a" -> ['/a', '/b']."""
    text = text.strip()
    if text.startswith("["):
        return [str(t) for t in yaml.safe_load(text)]
    return [t for t in text.replace(",", " ").split() if t]


def _launch_node(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context).strip()

    overrides = {}
    if arg("model_dir"):
        overrides["model_dir"] = arg("model_dir")
    if arg("backend"):
        overrides["backend"] = arg("backend")
    if arg("camera_topics"):
        overrides["camera_topics"] = _camera_list(arg("camera_topics"))
    if arg("use_compressed"):
        overrides["use_compressed"] = arg("use_compressed").lower() in ("true", "1", "yes")
    parameters = [arg("params_file")] if arg("params_file") else []
    if overrides:
        parameters.append(overrides)
    return [
        LifecycleNode(
            package="mobile_o_ros",
            executable="mobile_o_node",
            name="mobile_o",
            namespace=arg("namespace"),
            parameters=parameters,
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description():
    """The launch arguments and the node."""
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "namespace",
                default_value="/mobile_o",
                description="Namespace of the node, its services (ask, generate_image, edit_image), actions and topics",
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=PathJoinSubstitution(
                    [FindPackageShare("mobile_o_ros"), "config", "mobile_o.yaml"]
                ),
                description="ROS 2 parameters file (/**: ros__parameters:); empty = the node's defaults",
            ),
            DeclareLaunchArgument(
                "model_dir",
                default_value="",
                description="Mobile-O export folder (manifest.json + graphs); empty = model_dir from params_file",
            ),
            DeclareLaunchArgument(
                "backend",
                default_value="",
                choices=["", "onnxruntime", "tensorrt"],
                description="Inference backend; empty = backend from params_file (default onnxruntime)",
            ),
            DeclareLaunchArgument(
                "camera_topics",
                default_value="",
                description="Camera topics, e.g. \"['/front/image_raw', '/rear/image_raw']\"; empty = from params_file",
            ),
            DeclareLaunchArgument(
                "use_compressed",
                default_value="",
                choices=["", "true", "false"],
                description="Subscribe to <topic>/compressed (JPEG/PNG); empty = from params_file (default false)",
            ),
            OpaqueFunction(function=_launch_node),
        ]
    )
