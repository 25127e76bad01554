"""The sim node alone: a MuJoCo task as a ROS 2 robot.

    ros2 launch robot_stack sim.launch.py task:=walker-walk realtime_factor:=0.5
    ros2 launch robot_stack sim.launch.py lockstep:=true max_episode_steps:=200
"""
import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.parameter_descriptions import ParameterValue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robot_stack_nodes import config_file, robot_stack_node  # noqa: E402


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("task", default_value="cheetah-run",
                              description="cheetah-run | walker-walk | hopper-hop"),
        DeclareLaunchArgument("realtime_factor", default_value="1.0",
                              description="sim seconds per wall second; 0 = as fast as possible"),
        DeclareLaunchArgument("lockstep", default_value="false",
                              description="step only once a command answered the last state"),
        DeclareLaunchArgument("max_episode_steps", default_value="0",
                              description="truncate episodes after this many steps; 0 = task's"),
        robot_stack_node("sim_node", "sim", [
            config_file("sim.yaml"),
            {"task": LaunchConfiguration("task"),
             "realtime_factor": ParameterValue(LaunchConfiguration("realtime_factor"),
                                               value_type=float),
             "lockstep": ParameterValue(LaunchConfiguration("lockstep"), value_type=bool),
             "max_episode_steps": ParameterValue(LaunchConfiguration("max_episode_steps"),
                                                 value_type=int)},
        ]),
    ])
