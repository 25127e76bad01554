"""The policy node (`policy`): drives a robot with an exported ONNX policy.

Topics (relative names, so a namespace applies; the observation topics and the command topic
come from the robot spec):
  subscribes  <observation topics>  sensor_msgs/JointState | std_msgs/Float64MultiArray
              estop                 std_msgs/Bool     true latches the e-stop (safe action)
  publishes   <action topic>        std_msgs/Float64MultiArray  (ros2_control command topic)
              ~/status              std_msgs/String   JSON (transient local, status_rate Hz)
              /diagnostics          diagnostic_msgs/DiagnosticArray  latency and safe-action counts
  services    ~/enable              std_srvs/SetBool  enable/disable; enabling clears the e-stop
              ~/reset_estop         std_srvs/Trigger  clear the e-stop latch

trigger `timer`: one command per tick at rate_hz; `observation`: one command per observation
message, per enable/e-stop event, and one safe command when the observations turn stale.
The safe action comes from the spec's action.command_interface (runtime.PolicyRunner): hold the
positions measured at the stop (position), or zero (velocity, effort).
The control path (observation subscriptions, command publisher) belongs to a second node,
`<name>_control`, served in the main thread by a ControlLoop (ros_nodes/control_loop.py: one
wait set, no executor, ticks on deadlines), while the admin node (services, e-stop) spins in
an executor thread: a slow admin callback does not hold up observations or ticks, and an
observation is answered as soon as it is taken, without a thread hand-off. Status and
diagnostics are published by the control thread between ticks (the loop's idle task), so that
they never contend with a tick for the GIL. The control
path takes and publishes serialized bytes (robot_stack/cdr.py) and gathers the observation
from them (robot_stack/deploy/observation.py), checked against rclpy's own deserialization and
the spec; an observation message that cannot be deserialized is dropped and counted
(`unreadable_messages` in ~/status).
Logic (metadata checks, safety, latency statistics): robot_stack/deploy/runtime.py.
"""
from __future__ import annotations

import argparse
import gc
import sys
import threading
import time

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from robot_stack import cdr
from robot_stack.deploy.observation import ObservationReader
from robot_stack.deploy.runtime import (PROVIDER_ORDER, OnnxPolicy, PolicyRunner, SafetyConfig,
                                        check_compatible)
from robot_stack.errors import ArgumentParser, ConfigError
from robot_stack.spec import FLOAT64_ARRAY, POSITION, MalformedMessage, check_positive, load_spec
from ros_nodes import convert
from ros_nodes.control_loop import ControlLoop
from ros_nodes.node_main import node_main

TRIGGERS = ("timer", "observation")
PARAMETERS = {  # name: (default, description)
    "policy": ("", "exported ONNX policy (robot-stack export)"),
    "spec": ("", "robot spec YAML (config/robot_*.yaml)"),
    "provider": ("auto", "onnxruntime provider: auto (CUDA, then CPU) | tensorrt | cuda | cpu"),
    "trigger": ("timer", "timer: ticks at rate_hz | observation: one command per observation"),
    "rate_hz": (0.0, "control rate; 0 = the spec's rate_hz"),
    "stale_timeout_s": (0.0, "observation age that gives the safe action; 0 = the spec's"),
    "max_delta": (0.0, "largest command change per tick; 0 = no rate limit"),
    "enabled": (True, "start enabled"),
    "status_rate": (5.0, "Hz of ~/status and /diagnostics"),
    "thread_priority": (50, "SCHED_FIFO priority of the control thread; 0 = normal scheduling"),
    "lock_memory": (True, "lock the process's memory in RAM (mlockall) before the control loop "
                    "starts, so that no page fault stalls a tick"),
}


class PolicyNode(Node):
    def __init__(self, overrides=()):
        super().__init__("policy", parameter_overrides=list(overrides))
        p = {name: self.declare_parameter(name, default,
                                          ParameterDescriptor(description=text)).value
             for name, (default, text) in PARAMETERS.items()}
        if not p["policy"] or not p["spec"]:
            raise ConfigError("the policy node needs both --policy (ONNX file) and --spec (robot "
                              "spec YAML)")
        if p["trigger"] not in TRIGGERS:
            raise ConfigError(f"trigger must be one of {TRIGGERS}, got {p['trigger']!r}")
        if p["rate_hz"] != 0:  # 0: the spec's
            check_positive("rate_hz", p["rate_hz"])
        check_positive("status_rate", p["status_rate"])
        self.spec = load_spec(p["spec"])
        observation_streams = [s for s in self.spec.streams.values() if s.role == "observation"]
        interface = self.spec.action.command_interface
        safety = SafetyConfig(
            interface, stale_timeout_s=p["stale_timeout_s"] or min(s.stale_timeout_s
                                                                   for s in observation_streams),
            max_delta=p["max_delta"] or None)
        safety.validate()  # before the model loads: a bad spec or option is refused at once
        position_index = self.spec.commanded_positions() if interface == POSITION else None
        self.policy = OnnxPolicy(p["policy"], provider=p["provider"])
        check_compatible(self.policy.metadata, self.spec.robot_description(), p["spec"])
        self.runner = PolicyRunner(self.policy, self.spec.action.low, self.spec.action.high, safety,
                                   position_index)
        self.runner.set_enabled(p["enabled"])
        self.trigger = p["trigger"]
        self.period = 1.0 / (p["rate_hz"] or self.spec.rate_hz)
        self.lock = threading.Lock()  # the runner: admin callbacks vs the control thread
        self.tick_due = False  # an enable/e-stop event to answer in observation mode
        self.stale_reported = False
        self.unreadable = 0  # observation messages that could not be deserialized
        self.received: dict[str, float] = {}
        self.observation_topics = [s.topic for s in observation_streams]

        # A node-local name remap: the global one (`__node:=policy` from launch) would give
        # both nodes the same name, and local arguments take precedence in rcl.
        control_name = f"{self.get_name()}_control"
        self.control = rclpy.create_node(control_name, context=self.context,
                                         namespace=self.get_namespace(),
                                         cli_args=["--ros-args", "-r", f"__node:={control_name}"],
                                         start_parameter_services=False,
                                         parameter_overrides=[Parameter(
                                             "start_type_description_service", value=False)])
        self.command_pub = self.control.create_publisher(Float64MultiArray,
                                                         self.spec.action.topic, 10)
        self.status_pub = self.create_publisher(
            String, "~/status", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # The control path reads and writes serialized bytes (robot_stack/cdr.py): rclpy's
        # message objects cost about as much per tick as the inference.
        self.observations = ObservationReader(self.spec, convert.deserialize_fields)
        for s in observation_streams:
            self.control.create_subscription(
                convert.MESSAGE_CLASSES[s.msg_type], s.topic,
                lambda data, t=s.topic: self.on_observation(t, data), 10, raw=True)
        encoder = cdr.CommandEncoder(
            self.spec.action.size,
            lambda data: convert.deserialize_fields(FLOAT64_ARRAY, data)["data"])
        self.encode_command = encoder if encoder.usable else convert.command_msg
        self.create_subscription(Bool, "estop", self.on_estop, 10)
        self.create_service(SetBool, "~/enable", self.on_enable)
        self.create_service(Trigger, "~/reset_estop", self.on_reset_estop)
        self.control_loop = ControlLoop(self.control, self.period, self.on_deadline,
                                        priority=p["thread_priority"],
                                        lock_memory=p["lock_memory"],
                                        idle_task=self.publish_status,
                                        idle_period=1.0 / p["status_rate"])
        meta = self.policy.metadata
        self.get_logger().info(
            f"policy {p['policy']} (task {meta.task}, run {meta.training_run}) on "
            f"{self.policy.provider}; trigger {self.trigger} at {1 / self.period:g} Hz, "
            f"commands on {self.spec.action.topic}")
        if self.policy.fell_back:
            self.get_logger().warning(
                f"{PROVIDER_ORDER[p['provider']][0]} unavailable (not in this onnxruntime "
                f"build, its libraries missing or no device): running on {self.policy.provider}")
        if not encoder.usable:
            self.get_logger().warning("the middleware did not read back a command written as "
                                      "little-endian CDR: publishing message objects")
        if meta.control_rate_hz and abs(meta.control_rate_hz - 1 / self.period) > 1e-6:
            self.get_logger().warning(f"control rate {1 / self.period:g} Hz differs from the "
                                      f"training data's {meta.control_rate_hz:g} Hz")

    # ----- admin executor thread -----

    def on_estop(self, msg: Bool) -> None:
        if msg.data:
            with self.lock:
                self.runner.estop()
                self.tick_due = True
            self.get_logger().error("e-stop latched: publishing the safe action until "
                                    "~/reset_estop or ~/enable true")

    def on_enable(self, request: SetBool.Request, response: SetBool.Response):
        with self.lock:
            response.message = self.runner.set_enabled(request.data)
            self.tick_due = True
        response.success = True
        self.get_logger().info(f"policy {response.message}")
        return response

    def on_reset_estop(self, request: Trigger.Request, response: Trigger.Response):
        with self.lock:
            response.success = True
            response.message = "e-stop cleared" if self.runner.reset_estop() else "no e-stop set"
        return response

    # ----- control thread -----
    def publish_status(self) -> None:
        # The control loop's idle task: between ticks, in the control thread. Reads without
        # the lock: an admin callback may change a flag meanwhile, the next status shows it.
        status = self.runner.status()
        status.update(provider=self.policy.provider, trigger=self.trigger,
                      rate_hz=1 / self.period, missed_ticks=self.control_loop.schedule.missed,
                      tick_lateness=self.control_loop.schedule.lateness.summary(),
                      unreadable_messages=self.unreadable,
                      task=self.policy.metadata.task)
        self.status_pub.publish(convert.status_msg(status))
        level = (DiagnosticStatus.ERROR if status["estop"] else DiagnosticStatus.OK
                 if status["state"] == "running" else DiagnosticStatus.WARN)
        self.diag_pub.publish(convert.diagnostics_msg(
            f"{self.get_name()}: policy", status["task"], level, status["state"], status,
            self.get_clock().now().to_msg()))

    def on_observation(self, topic: str, data: bytes) -> None:
        try:
            self.observations.receive(topic, data)
        except MalformedMessage as e:  # dropped: the last good message stands, until stale
            self.unreadable += 1
            self.get_logger().error(f"{topic}: {e}", throttle_duration_sec=1.0)
            return
        self.received[topic] = time.monotonic()
        self.stale_reported = False
        if self.trigger == "observation":
            self.tick()

    def on_deadline(self) -> None:
        if self.trigger == "timer":
            self.tick()
        elif self.tick_due or self._newly_stale():
            # Observation trigger: between observations, answer enable/e-stop events and
            # observations that turned stale, within a period.
            self.tick_due = False
            self.tick()

    def run(self) -> None:
        # What start-up built (onnxruntime, numpy, rclpy) leaves the garbage collector's view,
        # so that its collections in the control thread stay short.
        gc.freeze()
        # A thread waiting for the GIL asks its holder to let go after this interval (5 ms by
        # default): a service callback in the admin thread could otherwise hold ticks that long.
        sys.setswitchinterval(1e-4)
        try:
            self.control_loop.run()
        finally:
            self.control.destroy_node()

    def _newly_stale(self) -> bool:
        # One safe command per stale spell: the actuators hold it, and a stream of them would
        # pass for answers to a lockstep sim's next state.
        if self.stale_reported or len(self.received) < len(self.observation_topics):
            return False  # nothing commanded yet, or already answered with the safe action
        self.stale_reported = (time.monotonic() - min(self.received.values())
                               > self.runner.config.stale_timeout_s)
        return self.stale_reported

    def tick(self) -> None:
        start = time.perf_counter()
        with self.lock:
            if len(self.received) == len(self.observation_topics):
                oldest = min(self.received.values())
                try:
                    self.runner.observe(self.observations.observation(),
                                        now=oldest)
                except MalformedMessage as e:
                    self.runner.observe(None, problem=str(e), now=oldest)
            command = self.runner.step()
        if command is not None:  # None: a position robot not measured yet, nothing stops it
            self.command_pub.publish(self.encode_command(command))
        self.runner.loop.add(time.perf_counter() - start)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="robot-stack deploy",
        description="Drive a robot with an exported ONNX policy (node `policy`). Options "
        "override the ROS parameters of the same name.")
    parser.add_argument("--policy", help="ONNX file from robot-stack export")
    parser.add_argument("--spec", help="robot spec YAML, e.g. config/robot_cheetah_sim.yaml")
    parser.add_argument("--provider", help="auto | tensorrt | cuda | cpu (default auto)")
    parser.add_argument("--trigger", help="timer | observation (default timer)")
    parser.add_argument("--rate-hz", type=float, help="control rate (default: the spec's)")
    parser.add_argument("--stale-timeout-s", type=float,
                        help="observation age that gives the safe action (default: the spec's)")
    parser.add_argument("--max-delta", type=float, help="rate limit per tick (default none)")
    parser.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None,
                        help="start enabled (default on)")
    parser.add_argument("--thread-priority", type=int,
                        help="SCHED_FIFO priority of the control thread, 0 = normal scheduling "
                        "(default 50; needs CAP_SYS_NICE, else a warning and normal scheduling)")
    parser.add_argument("--lock-memory", action=argparse.BooleanOptionalAction, default=None,
                        help="lock the process's memory in RAM before the control loop starts "
                        "(default on; needs CAP_IPC_LOCK, else a warning)")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = ("policy", "spec", "provider", "trigger", "rate_hz", "stale_timeout_s",
               "max_delta", "enabled", "thread_priority", "lock_memory")
    return node_main(argv, build_parser(), {name: name for name in options}, PolicyNode,
                     PolicyNode.run)


if __name__ == "__main__":
    sys.exit(main())
