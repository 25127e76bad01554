"""The policy node alone, for a robot (or sim) that is already running.

    ros2 launch robot_stack deploy.launch.py policy:=policy.onnx
    ros2 launch robot_stack deploy.launch.py policy:=policy.onnx spec:=robot.yaml provider:=tensorrt

The node refuses to start (one error line) when the model was not trained for the spec's robot.
"""
import sys
from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robot_stack_nodes import config_file, robot_stack_node  # noqa: E402


def absolute(argument: str) -> PythonExpression:
    """The path argument made absolute against the directory `ros2 launch` was started in
    (the node may run elsewhere: from a checkout it runs in the checkout)."""
    return PythonExpression(["__import__('os').path.abspath('", LaunchConfiguration(argument),
                             "')"])


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        DeclareLaunchArgument("policy", description="ONNX file from robot-stack export"),
        DeclareLaunchArgument("spec", default_value=config_file("robot_cheetah_sim.yaml"),
                              description="robot spec YAML"),
        DeclareLaunchArgument("provider", default_value="auto",
                              description="auto (CUDA, then CPU) | tensorrt | cuda | cpu"),
        DeclareLaunchArgument("trigger", default_value="timer",
                              description="timer (spec rate) | observation (one per message)"),
        DeclareLaunchArgument("thread_priority", default_value="50",
                              description="SCHED_FIFO priority of the control thread; 0 = normal "
                              "scheduling (needs CAP_SYS_NICE, else a warning)"),
        DeclareLaunchArgument("lock_memory", default_value="true",
                              description="lock the node's memory in RAM (mlockall; needs "
                              "CAP_IPC_LOCK, else a warning)"),
        robot_stack_node("policy_node", "policy", [
            {"policy": absolute("policy"), "spec": absolute("spec"),
             "provider": LaunchConfiguration("provider"),
             "trigger": LaunchConfiguration("trigger"),
             "thread_priority": LaunchConfiguration("thread_priority"),
             "lock_memory": LaunchConfiguration("lock_memory")},
        ]),
    ])
