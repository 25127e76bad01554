"""Sim + policy node: an exported policy driving the MuJoCo robot over ROS 2, optionally
recording the rollouts (one episode per sim episode).

    ros2 launch robot_stack sim_deploy.launch.py policy:=policy.onnx
    ros2 launch robot_stack sim_deploy.launch.py policy:=policy.onnx out:=rollouts.zarr
"""
import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PythonExpression

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from robot_stack_nodes import task_spec_file  # noqa: E402


def generate_launch_description() -> LaunchDescription:
    task, out = LaunchConfiguration("task"), LaunchConfiguration("out")
    spec = task_spec_file(task)
    return LaunchDescription([
        DeclareLaunchArgument("policy", description="ONNX file from robot-stack export"),
        DeclareLaunchArgument("task", default_value="cheetah-run",
                              description="cheetah-run | walker-walk | hopper-hop"),
        DeclareLaunchArgument("realtime_factor", default_value="1.0",
                              description="sim seconds per wall second"),
        DeclareLaunchArgument("provider", default_value="auto",
                              description="auto (CUDA, then CPU) | tensorrt | cuda | cpu"),
        DeclareLaunchArgument("out", default_value="",
                              description="record the rollouts into this episode store"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / "sim.launch.py")),
            launch_arguments={"task": task,
                              "realtime_factor": LaunchConfiguration("realtime_factor")}.items()),
        # One command per sim state, so the command answers the state it was computed from.
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / "deploy.launch.py")),
            launch_arguments={"policy": LaunchConfiguration("policy"), "spec": spec,
                              "provider": LaunchConfiguration("provider"),
                              "trigger": "observation"}.items()),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / "record.launch.py")),
            launch_arguments={"spec": spec, "out": out, "teleop": "none", "task": task,
                              "auto_episodes": "true", "source": "sim",
                              "reset_service": "/sim/reset"}.items(),
            condition=IfCondition(PythonExpression(["'", out, "' != ''"]))),
    ])
