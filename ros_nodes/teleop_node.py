"""The teleop node (`teleop`): commands from a keyboard, a joystick or a policy, on one topic.

  publishes  commands        std_msgs/Float64MultiArray  one value per action dimension
             (topic names, action size and bounds from the robot spec, config/robot_*_sim.yaml)
  keyboard   reads keys from the terminal on stdin; publishes the held action at publish_rate Hz
             and after every key
  joy        subscribes joy (sensor_msgs/Joy), mapped through a YAML mapping; publishes after
             every Joy message and at publish_rate Hz
  scripted   subscribes joint_states (sensor_msgs/JointState) and episode_events
             (std_msgs/String); one command per joint state, closed loop
  episode keys/buttons call the recorder: /recorder/start_episode (std_srvs/Trigger),
             /recorder/stop_episode (std_srvs/SetBool, data = success),
             /recorder/discard_episode (std_srvs/Trigger)
Logic (key state machine, joystick mapping, policy hook): robot_stack/teleop.py.
"""
from __future__ import annotations

import argparse
import os
import select
import sys
import termios
import time
import tty
import numpy as np
import rclpy
from rclpy.node import Node
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from robot_stack.errors import ArgumentParser, ConfigError, seed_value
from robot_stack.package_config import config_file
from robot_stack.spec import (JOINT_STATE, MalformedMessage, check_positive, load_spec,
                              stream_name)
from robot_stack.teleop import (DISCARD, START, STOP_FAILURE, STOP_SUCCESS, CallablePolicy,
                                JoyMapping, JoyTeleop, KeyboardMapping, KeyboardTeleop,
                                load_policy_factory)
from ros_nodes import convert
from ros_nodes.node_main import node_main

SOURCES = ("keyboard", "joy", "scripted")
PARAMETERS = {
    "source": "keyboard",
    "task": "cheetah-run",  # scripted source: the sim/ task of the policy
    "spec": "",  # robot spec YAML (action size and bounds, observation); default from task
    "mapping": "",  # keyboard or joy YAML; default teleop_keyboard.yaml, joy_xbox.yaml from
    # the package's config files (robot_stack/package_config.py)
    "policy": "scripted",  # scripted source: scripted | random | package.module:factory
    "noise": 0.3,  # std of Gaussian action noise of the scripted source
    "seed": 0,
    "publish_rate": 50.0,  # Hz, keyboard and joy sources
}
RECORDER_SERVICES = {  # episode request -> (service, type, SetBool data)
    START: ("/recorder/start_episode", Trigger, None),
    STOP_SUCCESS: ("/recorder/stop_episode", SetBool, True),
    STOP_FAILURE: ("/recorder/stop_episode", SetBool, False),
    DISCARD: ("/recorder/discard_episode", Trigger, None),
}


class TeleopNode(Node):
    def __init__(self, overrides=()):
        super().__init__("teleop", parameter_overrides=list(overrides))
        p = {name: self.declare_parameter(name, default).value
             for name, default in PARAMETERS.items()}
        if p["source"] not in SOURCES:
            raise ConfigError(f"unknown teleop source {p['source']!r}; "
                              f"choose one of {', '.join(SOURCES)}")
        self.period = 1.0 / check_positive("publish_rate", p["publish_rate"])
        # The robot spec gives the action size and bounds, and builds the observation exactly
        # as the recorder does.
        domain = p["task"].split("-")[0]
        self.spec = load_spec(p["spec"] or config_file(f"robot_{domain}_sim.yaml"))
        act_dim, low, high = self.spec.act_dim, self.spec.action.low, self.spec.action.high
        self.source = p["source"]
        self.command_pub = self.create_publisher(Float64MultiArray, self.spec.action.topic, 10)
        self.clients_ = {service: self.create_client(kind, service)
                         for service, kind, _ in RECORDER_SERVICES.values()}

        if self.source == "keyboard":
            mapping = KeyboardMapping.from_yaml(p["mapping"] or config_file("teleop_keyboard.yaml"))
            self.device = KeyboardTeleop(mapping, act_dim, low, high)
            if not os.isatty(sys.stdin.fileno()):
                raise ConfigError("the keyboard source reads keys from a terminal: run it in one "
                                  "(stdin is not a tty)")
            print(mapping.help_text(act_dim), file=sys.stderr)
        elif self.source == "joy":
            mapping = JoyMapping.from_yaml(p["mapping"] or config_file("joy_xbox.yaml"))
            self.device = JoyTeleop(mapping, act_dim, low, high)
            self.create_subscription(Joy, "joy", self.on_joy, 10)
            self.create_timer(self.period, self.publish_action)
        else:
            from sim import make_task

            task = make_task(p["task"])
            if ":" in p["policy"]:
                fn = load_policy_factory(p["policy"])(task)
                self.policy = CallablePolicy(fn, p["noise"], p["seed"], low, high)
            else:
                from sim.policies import make_policy

                self.policy = make_policy(p["policy"], task, noise=p["noise"], seed=p["seed"])
            topics = {s.topic for s in self.spec.streams.values() if s.role == "observation"}
            if len(topics) != 1 or self.spec.streams[stream_name(*topics)].msg_type != JOINT_STATE:
                raise ConfigError(f"the scripted source needs a robot spec whose observation "
                                  f"comes from one JointState topic, got topics {sorted(topics)}")
            self.state_topic = topics.pop()
            self.create_subscription(JointState, self.state_topic, self.on_joint_state, 10)
            self.create_subscription(String, self.spec.events_topic or "episode_events",
                                     self.on_episode_event, 10)
        self.get_logger().info(f"source {self.source}, robot {self.spec.task}, {act_dim} actions")

    def run(self) -> None:
        """The main thread: reads the keyboard, or waits while callbacks do the work."""
        if self.source == "keyboard":
            self.keyboard_loop()  # returns at shutdown or when the terminal closes
            return
        while rclpy.ok():
            time.sleep(0.1)

    # ----- keyboard and joystick -----
    def publish_action(self) -> None:
        self.command_pub.publish(convert.command_msg(self.device.action))

    def on_joy(self, msg: Joy) -> None:
        for request in self.device.update(msg.axes, msg.buttons):
            self.request_episode(request)
        self.publish_action()

    def keyboard_loop(self) -> None:
        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still sends SIGINT
        try:
            while rclpy.ok():
                if select.select([fd], [], [], self.period)[0]:
                    keys = os.read(fd, 64).decode(errors="ignore")
                    if not keys:  # end of input: the terminal went away
                        return
                    for key in keys:
                        request = self.device.press(key)
                        if request:
                            self.request_episode(request)
                    print(f"\raction {np.array2string(self.device.action, precision=2)}   ",
                          end="", file=sys.stderr, flush=True)
                self.publish_action()
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, saved)

    def request_episode(self, request: str) -> None:
        service, kind, success = RECORDER_SERVICES[request]
        client = self.clients_[service]
        if not client.service_is_ready():
            self.get_logger().warning(
                f"{request}: {service} is not available (is the recorder running?)")
            return
        future = client.call_async(kind.Request() if success is None else kind.Request(data=success))
        future.add_done_callback(lambda done: self._log_answer(request, done))

    def _log_answer(self, request: str, done) -> None:
        answer = None if done.cancelled() else done.result()
        if answer is None:
            self.get_logger().warning(f"{request}: the recorder did not answer")
        else:
            self.get_logger().info(
                f"{request}: {'done' if answer.success else 'refused'}: {answer.message}")

    # ----- scripted -----
    def on_joint_state(self, msg: JointState) -> None:
        try:
            obs = self.spec.observation_from_messages(
                {self.state_topic: convert.joint_state_fields(msg)})
        except MalformedMessage as exc:
            self.get_logger().warning(f"skipped joint state: {exc}", throttle_duration_sec=2.0)
            return
        self.command_pub.publish(convert.command_msg(self.policy.act(obs)))

    def on_episode_event(self, msg: String) -> None:
        if msg.data == "reset":
            self.policy.reset()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="robot-stack teleop",
        description="Publish commands (node `teleop`) from a keyboard, a joystick or a scripted "
        "policy. Options override the ROS parameters of the same name.")
    parser.add_argument("--source", choices=SOURCES, help="default keyboard")
    parser.add_argument("--task", help="sim task of the scripted policy, and of the default robot "
                        "spec config/robot_<domain>_sim.yaml (default cheetah-run)")
    parser.add_argument("--spec", help="robot spec YAML: action size and bounds, observation")
    parser.add_argument("--mapping", help="keyboard or joystick mapping YAML (default "
                        "config/teleop_keyboard.yaml or config/joy_xbox.yaml)")
    parser.add_argument("--policy", help="scripted source: scripted | random | "
                        "package.module:factory (factory(task) returns an obs -> action "
                        "callable); default scripted")
    parser.add_argument("--noise", type=float, help="std of Gaussian action noise (default 0.3)")
    parser.add_argument("--seed", type=seed_value)
    parser.add_argument("--publish-rate", type=float, help="Hz for keyboard and joy (default 50)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return node_main(argv, build_parser(), {name: name for name in PARAMETERS}, TeleopNode,
                     TeleopNode.run)


if __name__ == "__main__":
    sys.exit(main())
