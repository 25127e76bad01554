"""Sim + scripted teleop + recorder: episodes recorded automatically from the sim's events.

    ros2 launch robot_stack sim_record.launch.py out:=demo.zarr
    ros2 launch launch/sim_record.launch.py out:=demo.zarr task:=walker-walk   # from a checkout

The sim runs in lockstep by default: it steps only once the scripted teleop's command answered
its last state, so every recorded (state, action) pair is one the sim applied, however loaded
the machine (lockstep:=false lets the sim run on, holding late commands).
Stop with Ctrl-C: the recorder commits the open episode (config/recorder.yaml on_shutdown).
"""
import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from robot_stack_nodes import task_spec_file  # noqa: E402


def generate_launch_description() -> LaunchDescription:
    task = LaunchConfiguration("task")
    spec = task_spec_file(task)
    return LaunchDescription([
        DeclareLaunchArgument("out", description="episode store path (created or appended to)"),
        DeclareLaunchArgument("task", default_value="cheetah-run",
                              description="cheetah-run | walker-walk | hopper-hop"),
        DeclareLaunchArgument("realtime_factor", default_value="1.0",
                              description="sim seconds per wall second"),
        DeclareLaunchArgument("lockstep", default_value="true",
                              description="sim steps only once a command answered its state"),
        DeclareLaunchArgument("max_episode_steps", default_value="0",
                              description="truncate episodes after this many steps; 0 = task's"),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / "sim.launch.py")),
            launch_arguments={"task": task,
                              "realtime_factor": LaunchConfiguration("realtime_factor"),
                              "lockstep": LaunchConfiguration("lockstep"),
                              "max_episode_steps": LaunchConfiguration("max_episode_steps"),
                              }.items()),
        IncludeLaunchDescription(
            PythonLaunchDescriptionSource(str(HERE / "record.launch.py")),
            launch_arguments={"spec": spec, "out": LaunchConfiguration("out"),
                              "teleop": "scripted", "task": task, "auto_episodes": "true",
                              "source": "scripted", "reset_service": "/sim/reset"}.items()),
    ])
