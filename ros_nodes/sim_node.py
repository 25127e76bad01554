"""The sim node (`sim`): runs a sim/ task as if it were the robot.

Topics (relative names, so a namespace applies):
  publishes  joint_states    sensor_msgs/JointState  all MuJoCo joints: position=qpos, velocity=qvel
             applied_commands  sensor_msgs/JointState  one report per published state, stamped
                             with that state's joint_states stamp: the command the step from it
                             applied (after clipping, or the held one; name = actuated joints,
                             effort = values in action units), so (s_t, a_t) share a stamp, like
                             the commanded output in ros2_control controller states; effort
                             empty = nothing was applied from it: the episode ended there
             reward          std_msgs/Float64        the task reward of the step
             episode_events  std_msgs/String         "reset", "terminal", "truncated"
             ~/status        std_msgs/String         JSON counters (transient local, status_rate Hz)
             /diagnostics    diagnostic_msgs/DiagnosticArray   the same counters
             /clock          rosgraph_msgs/Clock     sim time, when not real time or publish_clock
  subscribes commands        std_msgs/Float64MultiArray  one value per actuator
                             (ros2_control forward_command_controller convention)
  service    ~/reset         std_srvs/Trigger        start a new episode at the next tick; answers
                                                     once it has started (its own callback
                                                     group: commands keep flowing meanwhile)

With lockstep, the sim steps only once a command has answered the state it last published (up
to lockstep_timeout wall seconds, then it holds the last command and counts lockstep_timeouts):
a controller that answers every state then drives it with exact (state, action) pairs at any
host load. Pacing still applies: real time by default, faster with realtime_factor.

Per tick, in this order: applied_commands (end report of an unfinished episode's last state,
reset ticks), "reset" event (reset ticks), /clock, applied_commands (step ticks), joint_states,
applied_commands (end report, last step of an episode), reward (step ticks),
"terminal"/"truncated" event (last step of an episode). So an episode's events frame its states.
header.stamp is sim time when /clock is published, wall time otherwise.
Logic (command checks, hold-last-command, pacing): robot_stack/sim_runtime.py.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import Trigger

from robot_stack.errors import ArgumentParser, ConfigError, seed_value
from robot_stack.sim_runtime import Pacer, SimRuntime, tick_period
from ros_nodes import convert
from ros_nodes.node_main import node_main
from sim import make_task

PARAMETERS = {  # name: (default, description)
    "task": ("cheetah-run", "sim/ task name"),
    "seed": (0, "episode i starts from seed + i"),
    "realtime_factor": (1.0, "sim seconds per wall second; 0 = as fast as possible"),
    "auto_reset": (True, "start a new episode after one ends"),
    "publish_clock": (False, "publish /clock even at real time (always published otherwise)"),
    "command_timeout": (0.5, "sim seconds without commands before status reports holding"),
    "lockstep": (False, "step only after a command answered the last published state"),
    "lockstep_timeout": (1.0, "wall seconds a lockstep tick waits for its command, then holds"),
    "max_episode_steps": (0, "steps after which an episode is truncated; 0 = the task's limit"),
    "status_rate": (5.0, "Hz (wall) of ~/status and /diagnostics"),
}
WARN_THROTTLE_S = 2.0
SHUTDOWN_CHECK_S = 0.1  # how often a lockstep wait checks for shutdown


class SimNode(Node):
    def __init__(self, overrides=()):
        super().__init__("sim", parameter_overrides=list(overrides))
        p = {name: self.declare_parameter(name, default, ParameterDescriptor(description=text)).value
             for name, (default, text) in PARAMETERS.items()}
        task = make_task(p["task"])
        self.runtime = SimRuntime(task, seed=p["seed"], auto_reset=p["auto_reset"],
                                  command_timeout=p["command_timeout"],
                                  max_episode_steps=p["max_episode_steps"],
                                  lockstep=p["lockstep"])
        # Lockstep: time spent waiting for the controller is not caught up on by a burst of
        # ticks, each of which would leave the controller (and recorders) no time.
        self.pacer = Pacer(tick_period(task.control_dt, p["realtime_factor"]),
                           max_lag=0 if p["lockstep"] else 5)
        self.use_sim_stamps = p["publish_clock"] or p["realtime_factor"] != 1.0
        self.status_period = 1.0 / p["status_rate"]
        self.next_status = time.monotonic()
        self.lockstep_timeout = p["lockstep_timeout"]
        if not self.lockstep_timeout > 0:
            raise ConfigError(f"lockstep_timeout must be > 0 s, got {self.lockstep_timeout}")
        self.lock = threading.Lock()  # runtime is shared by the tick loop and the callbacks
        self.reset_done = threading.Condition(self.lock)
        self.answered = threading.Condition(self.lock)  # lockstep: a command answered the state

        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.applied_pub = self.create_publisher(JointState, "applied_commands", 10)
        self.unreported_stamp = None  # of the last published state, until its applied report
        self.reward_pub = self.create_publisher(Float64, "reward", 10)
        self.event_pub = self.create_publisher(String, "episode_events", 10)
        self.status_pub = self.create_publisher(
            String, "~/status", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.use_sim_stamps else None
        self.create_subscription(Float64MultiArray, "commands", self.on_command, 10)
        # The reset callback waits for the tick loop, which in lockstep first waits for the
        # answer to its last state: the service lives on a node of its own, spun by its own
        # executor thread (run), so that commands are taken meanwhile. (rclpy's
        # MultiThreadedExecutor did this before, but piled up thousands of pending futures
        # and spun at 100% CPU, which starved the tick loop: lockstep crawled at ~5 Hz.)
        reset_name = f"{self.get_name()}_reset"
        self.reset_node = rclpy.create_node(reset_name, context=self.context,
                                            namespace=self.get_namespace(),
                                            cli_args=["--ros-args", "-r", f"__node:={reset_name}"],
                                            start_parameter_services=False)
        self.reset_node.create_service(Trigger, f"{self.get_fully_qualified_name()}/reset",
                                       self.on_reset)
        self.get_logger().info(
            f"{task.name}: {task.act_dim} actions, {1 / task.control_dt:g} Hz, "
            f"realtime_factor {p['realtime_factor']:g}, auto_reset {p['auto_reset']}, "
            f"lockstep {p['lockstep']}, episodes of at most {self.runtime.max_episode_steps} "
            "steps")

    def on_command(self, msg: Float64MultiArray) -> None:
        with self.lock:
            problem = self.runtime.submit_command(convert.command_array(msg))
            self.answered.notify_all()
        if problem:
            self.get_logger().warning(f"rejected command: {problem}",
                                      throttle_duration_sec=WARN_THROTTLE_S)

    def on_reset(self, request: Trigger.Request, response: Trigger.Response) -> Trigger.Response:
        with self.lock:
            episodes = self.runtime.episodes
            self.runtime.reset_requested = True
            # The tick loop performs the reset so that all publishing keeps the per-tick order.
            # lockstep: the tick loop first waits for the answer to its last state
            timeout = max(1.0, 10 * self.pacer.period) + (
                self.lockstep_timeout if self.runtime.lockstep else 0.0)
            response.success = self.reset_done.wait_for(
                lambda: self.runtime.episodes > episodes, timeout=timeout)
        response.message = "new episode started" if response.success else "reset still pending"
        return response

    def run(self) -> None:
        reset_executor = SingleThreadedExecutor(context=self.context)
        reset_executor.add_node(self.reset_node)
        reset_thread = threading.Thread(target=self._spin_reset, args=(reset_executor,),
                                        daemon=True)
        reset_thread.start()
        try:
            self.tick_loop()
        finally:
            # The tick loop ends when the context shuts down, which ends that spin too; it
            # must have left its wait before its executor and node go (see node_main).
            reset_thread.join(timeout=5.0)
            reset_executor.shutdown()
            self.reset_node.destroy_node()

    @staticmethod
    def _spin_reset(executor: SingleThreadedExecutor) -> None:
        try:
            executor.spin()
        except ExternalShutdownException:
            pass
        except Exception:
            if rclpy.ok():
                raise

    def tick_loop(self) -> None:
        while rclpy.ok():
            self.wait_for_answer()
            self.pacer.wait()
            with self.lock:
                tick = self.runtime.tick()
                if tick is not None:
                    self.publish_tick(tick)
                    if "reset" in tick.events:
                        self.reset_done.notify_all()
                self.publish_status_when_due()
            if tick is None:  # idle after an episode ended: wait for a reset request
                time.sleep(self.pacer.period or 0.001)

    def wait_for_answer(self) -> None:
        """Lockstep: waits until a command answered the last published state, or times out."""
        deadline = time.monotonic() + self.lockstep_timeout
        with self.lock:
            while self.runtime.awaiting_answer and rclpy.ok():
                self.publish_status_when_due()
                left = deadline - time.monotonic()
                if left <= 0:
                    self.runtime.answer_timed_out()
                    self.get_logger().warning(
                        f"lockstep: no command within {self.lockstep_timeout:g} s, holding the "
                        "last one", throttle_duration_sec=WARN_THROTTLE_S)
                    return
                self.answered.wait(min(left, SHUTDOWN_CHECK_S))

    def publish_tick(self, tick) -> None:
        stamp = (convert.time_msg(tick.sim_time) if self.use_sim_stamps
                 else self.get_clock().now().to_msg())
        if "reset" in tick.events:
            self.report_applied(())  # a reset during an episode: its last state got no step
            self.event_pub.publish(String(data="reset"))
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=stamp))
        if tick.applied is not None:
            self.report_applied(tick.applied)
        self.joint_pub.publish(convert.joint_state_msg(
            self.runtime.task.joint_names, tick.qpos, tick.qvel, stamp))
        self.unreported_stamp = stamp
        if self.runtime.episode_over:
            self.report_applied(())
        if tick.reward is not None:
            self.reward_pub.publish(Float64(data=tick.reward))
        for event in tick.events:
            if event != "reset":
                self.event_pub.publish(String(data=event))

    def report_applied(self, command) -> None:
        """Applied-command report of the last published state (empty: none was applied)."""
        if self.unreported_stamp is not None:
            self.applied_pub.publish(convert.effort_msg(
                self.runtime.task.actuator_names, command, self.unreported_stamp))
            self.unreported_stamp = None

    def publish_status_when_due(self) -> None:
        if time.monotonic() >= self.next_status:
            self.next_status = time.monotonic() + self.status_period
            self.publish_status(self.runtime.status())

    def publish_status(self, status: dict) -> None:
        self.status_pub.publish(convert.status_msg(status))
        warn = status["holding"] or status["episode_over"]
        message = ("holding the last command" if status["holding"] else
                   "episode over, waiting for ~/reset" if status["episode_over"] else "running")
        self.diag_pub.publish(convert.diagnostics_msg(
            f"{self.get_name()}: {status['task']}", status["task"],
            DiagnosticStatus.WARN if warn else DiagnosticStatus.OK, message, status,
            self.get_clock().now().to_msg()))


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="robot-stack sim serve",
        description="Run a MuJoCo task as a ROS 2 robot (node `sim`). Options override the ROS "
        "parameters of the same name (e.g. from --ros-args --params-file config/sim.yaml).")
    parser.add_argument("--task", help="cheetah-run | walker-walk | hopper-hop "
                        "(default cheetah-run)")
    parser.add_argument("--seed", type=seed_value)
    parser.add_argument("--realtime-factor", type=float,
                        help="sim seconds per wall second (default 1); 0 = as fast as possible")
    parser.add_argument("--auto-reset", action=argparse.BooleanOptionalAction, default=None,
                        help="start a new episode when one ends (default on)")
    parser.add_argument("--publish-clock", action="store_true", default=None,
                        help="publish /clock even at real time")
    parser.add_argument("--lockstep", action=argparse.BooleanOptionalAction, default=None,
                        help="step only once a command answered the last published state "
                        "(synchronous simulation: exact state/action pairs; default off)")
    parser.add_argument("--lockstep-timeout", type=float,
                        help="wall seconds a lockstep tick waits for its command before holding "
                        "the last one (default 1)")
    parser.add_argument("--max-episode-steps", type=int,
                        help="truncate episodes after this many steps (default: the task's, 1000)")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = ("task", "seed", "realtime_factor", "auto_reset", "publish_clock", "lockstep",
               "lockstep_timeout", "max_episode_steps")
    return node_main(argv, build_parser(), {name: name for name in options}, SimNode, SimNode.run)


if __name__ == "__main__":
    sys.exit(main())
