"""The recorder plus a teleop source, for a robot (or sim) that is already running.

    ros2 launch robot_stack record.launch.py out:=demo.zarr teleop:=keyboard
    ros2 launch robot_stack record.launch.py spec:=/path/robot.yaml out:=demo.zarr teleop:=joy

teleop: keyboard | joy | scripted | none (commands come from elsewhere). ros2 launch gives its
processes no terminal input, so the keyboard teleop runs in a terminal of its own (terminal:=,
default `xterm -e`), or use teleop:=none and run `robot-stack teleop` in a second terminal.
The keyboard's and joystick's episode keys call the recorder's ~/start_episode,
~/stop_episode and ~/discard_episode services.
"""
import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.conditions import UnlessCondition
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.parameter_descriptions import ParameterValue

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robot_stack_nodes import config_file, robot_stack_node  # noqa: E402


def generate_launch_description() -> LaunchDescription:
    spec, teleop = LaunchConfiguration("spec"), LaunchConfiguration("teleop")
    # the teleop's key/axis mapping from this package's config/ (installed or checkout)
    mapping = PythonExpression([f"{{'keyboard': '{config_file('teleop_keyboard.yaml')}', "
                                f"'joy': '{config_file('joy_xbox.yaml')}'}}.get('", teleop,
                                "', '')"])
    return LaunchDescription([
        DeclareLaunchArgument("spec", default_value=config_file("robot_cheetah_sim.yaml"),
                              description="robot spec YAML"),
        DeclareLaunchArgument("out", description="episode store path (created or appended to)"),
        DeclareLaunchArgument("teleop", default_value="keyboard",
                              description="keyboard | joy | scripted | none"),
        DeclareLaunchArgument("auto_episodes", default_value="false",
                              description="episodes follow the sim's episode_events"),
        DeclareLaunchArgument("terminal", default_value="xterm -e",
                              description="prefix that gives the keyboard teleop a terminal"),
        DeclareLaunchArgument("task", default_value="cheetah-run",
                              description="sim/ task of the scripted teleop's policy"),
        DeclareLaunchArgument("reset_service", default_value="",
                              description="auto_episodes: Trigger service that starts an episode"),
        DeclareLaunchArgument("source", default_value="teleop",
                              description="episode source label: teleop | scripted | sim"),
        robot_stack_node("recorder_node", "recorder", [
            config_file("recorder.yaml"),
            {"spec": spec, "out": LaunchConfiguration("out"),
             "source": LaunchConfiguration("source"),
             "reset_service": LaunchConfiguration("reset_service"),
             "auto_episodes": ParameterValue(LaunchConfiguration("auto_episodes"),
                                             value_type=bool)},
        ]),
        robot_stack_node(
            "teleop_node", "teleop",
            [{"source": teleop, "spec": spec, "task": LaunchConfiguration("task"),
              "mapping": mapping}],
            prefix=PythonExpression(["'", LaunchConfiguration("terminal"), "' if '", teleop,
                                     "' == 'keyboard' else ''"]),
            condition=UnlessCondition(PythonExpression(["'", teleop, "' == 'none'"]))),
    ])
