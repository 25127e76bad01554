"""Shared by the launch files: where config files are and how to start a robot_stack node.

Not a launch file itself. The launch files import it from their own directory, which is
launch/ in a checkout and share/robot_stack/launch once installed; config/ sits beside it in
both cases (share/robot_stack/config when installed).
"""
import sys
from pathlib import Path

from ament_index_python.packages import PackageNotFoundError, get_package_prefix
from launch.substitutions import PythonExpression
from launch_ros.actions import Node

CONFIG_DIR = Path(__file__).resolve().parent.parent / "config"
CHECKOUT = Path(__file__).resolve().parent.parent


def config_file(name: str) -> str:
    return str(CONFIG_DIR / name)


def task_spec_file(task) -> PythonExpression:
    """The robot spec of a sim task (a launch substitution): config/robot_<domain>_sim.yaml,
    domain = the task name before "-"."""
    return PythonExpression(["'", str(CONFIG_DIR), "/robot_' + '", task,
                             "'.split('-')[0] + '_sim.yaml'"])


def robot_stack_node(executable: str, name: str, parameters: list, **kwargs) -> Node:
    """The node's executable from the installed package (lib/robot_stack/<executable>), or,
    in a checkout without the package in the ament index, `python -m ros_nodes.<executable>`."""
    try:
        get_package_prefix("robot_stack")
    except PackageNotFoundError:
        return Node(executable=sys.executable, arguments=["-m", f"ros_nodes.{executable}"],
                    name=name, parameters=parameters, cwd=str(CHECKOUT),
                    additional_env={"PYTHONPATH": str(CHECKOUT)}, output="screen", **kwargs)
    return Node(package="robot_stack", executable=executable, name=name,
                parameters=parameters, output="screen", **kwargs)
