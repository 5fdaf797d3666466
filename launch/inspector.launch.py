"""Starts inspect3d_node with config/inspector.yaml.

    ros2 launch inspect3d inspector.launch.py input_topic:=/cell3/camera/points device:=cuda

Arguments: params_file, input_topic (replaces the YAML's: every result names it in source_topic), model_path,
models_dir, device.
The XML twin, inspector.launch.xml, takes the same arguments.
"""
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description():
    share = get_package_share_directory("inspect3d")
    return LaunchDescription([
        DeclareLaunchArgument("params_file", default_value=os.path.join(share, "config", "inspector.yaml")),
        DeclareLaunchArgument("input_topic", default_value="/camera/points"),
        DeclareLaunchArgument("model_path", default_value=os.path.join(share, "models", "featuretype")),
        DeclareLaunchArgument("models_dir", default_value=os.path.join(os.path.expanduser("~"), ".ros", "inspect3d", "models")),
        DeclareLaunchArgument("device", default_value="auto"),
        Node(
            package="inspect3d",
            executable="inspect3d_node",
            name="inspect3d_node",
            output="screen",
            emulate_tty=True,
            parameters=[
                LaunchConfiguration("params_file"),
                {
                    "input_topic": LaunchConfiguration("input_topic"),
                    "model_path": LaunchConfiguration("model_path"),
                    "models_dir": LaunchConfiguration("models_dir"),
                    "device": LaunchConfiguration("device"),
                    "training_config": os.path.join(share, "config", "detector.json"),
                },
            ],
        ),
    ])
