"""Start-up and clean shutdown shared by the node entry points.

rclpy.init installs rclpy's SIGINT and SIGTERM handlers, which shut the context down: spinning
stops, `rclpy.ok()` turns false, and the node exits with status 0 and no traceback. Ctrl-C under
`ros2 launch` delivers SIGINT twice (from the terminal and from launch); once shutting down,
further SIGINT/SIGTERM are ignored so that the second cannot interrupt the shutdown. After a
clean stop the process ends with os._exit (exit_without_teardown): the middleware's C++
teardown at interpreter exit sometimes aborted.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from typing import Callable, NoReturn

import rclpy
from rclpy.executors import Executor, ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.utilities import remove_ros_args

from robot_stack.errors import RobotStackError


def parse_node_args(parser: argparse.ArgumentParser,
                    argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Splits argv into the node's own options and the ROS arguments (after --ros-args)."""
    options = parser.parse_args(remove_ros_args(["node"] + argv)[1:])
    return options, ["node"] + argv


def parameter_overrides(options: argparse.Namespace, names: dict[str, str]) -> list[Parameter]:
    """Options given on the command line (not None) override ROS parameters of the same meaning.

    ``names`` maps option attribute -> parameter name. Precedence: command-line option, then
    ``--ros-args -p``/``--params-file``, then the declared default.
    """
    return [Parameter(param, value=getattr(options, attr)) for attr, param in names.items()
            if getattr(options, attr) is not None]


def _spin(executor: Executor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass
    except Exception:
        # A shutdown under a running wait fails it (the context is gone): a normal stop.
        if rclpy.ok():
            raise


def _ignore_stop_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def run_node(ros_args: list[str], make_node: Callable[[], Node],
             main_loop: Callable[[Node], None] | None = None) -> int:
    """Creates the node and spins it until shutdown.

    With ``main_loop``, the executor spins in a background thread (subscriptions, services,
    timers) while ``main_loop(node)`` runs in the main thread; it must return once
    ``rclpy.ok()`` is false.
    """
    rclpy.init(args=ros_args)
    node = executor = spinner = None
    try:
        node = make_node()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if main_loop is None:
            executor.spin()
        else:
            spinner = threading.Thread(target=_spin, args=(executor,), daemon=True)
            spinner.start()
            main_loop(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        # A signal shuts the context down under a running publish or call, which then fails;
        # that is a normal stop. Anything else is a real error.
        if rclpy.ok():
            raise
    finally:
        _ignore_stop_signals()
        # Order matters: the spinning thread must have left its wait before the node and the
        # executor go, or the middleware aborts the process at exit.
        rclpy.try_shutdown()
        _ignore_stop_signals()  # try_shutdown reinstalled Python's handlers (KeyboardInterrupt)
        if spinner is not None:
            spinner.join(timeout=5.0)
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
    return 0


def node_main(argv: list[str] | None, parser: argparse.ArgumentParser, parameters: dict[str, str],
              make_node: Callable[[list[Parameter]], Node],
              main_loop: Callable[[Node], None] | None = None) -> int:
    """A node's whole `main(argv)`: its options become parameter overrides (``parameters``
    maps option attribute -> parameter name), then run_node; bad input (RobotStackError)
    is one line on stderr and exit status 2, as in the robot-stack CLI."""
    argv = sys.argv[1:] if argv is None else list(argv)
    options, ros_args = parse_node_args(parser, argv)
    overrides = parameter_overrides(options, parameters)
    try:
        code = run_node(ros_args, lambda: make_node(overrides), main_loop)
    except RobotStackError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    exit_without_teardown(code)


def exit_without_teardown(code: int) -> NoReturn:
    """Ends the process once run_node has shut the node down in order.

    At interpreter teardown the middleware's C++ threads and statics go in no defined order:
    about one clean SIGINT stop in ten, under load, aborted there with "terminate called
    without an active exception" (exit status -6, no Python frame left, seen with
    faulthandler). By now the node has closed everything it owns (the recorder has committed
    or discarded its episode), so skipping the teardown loses nothing."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
