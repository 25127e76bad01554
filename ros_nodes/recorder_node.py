"""The recorder node (`recorder`): records the topics of a robot spec into an episode store.

Topics and services (relative names, so a namespace applies):
  subscribes  the spec's observation, action (its applied-command report when the spec has
              action.applied), image, reward and events topics
  publishes   ~/status       std_msgs/String (JSON counters, see Recorder.status)
              /diagnostics   diagnostic_msgs/DiagnosticArray, the same counters
  services    ~/start_episode    std_srvs/Trigger   refused while a required stream is stale
              ~/stop_episode     std_srvs/SetBool   data = success label; commits, and answers
                                 once the writer confirmed the commit on disk (or failed it;
                                 "commit pending" after commit_wait_s)
              ~/discard_episode  std_srvs/Trigger
With auto_episodes, the sim's episode_events start ("reset") and commit ("terminal",
"truncated") episodes. On SIGINT/SIGTERM the open episode is committed or discarded
(on_shutdown) before the store is closed. Sampling and episode logic: robot_stack/recording.py.
"""
from __future__ import annotations

import argparse
import atexit
import signal
import sys

import rclpy.logging
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.exceptions import ParameterException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64, Float64MultiArray, String
from std_srvs.srv import SetBool, Trigger

from robot_stack.errors import ArgumentParser, ConfigError, RobotStackError
from robot_stack.recording import Recorder, StoreWriterThread, check_settings, open_store
from robot_stack.spec import FLOAT64, FLOAT64_ARRAY, IMAGE, JOINT_STATE, STRING, load_spec
from ros_nodes import convert
from ros_nodes.node_main import parameter_overrides, parse_node_args, run_node

PARAMETERS = {  # name: (default, description)
    "spec": ("", "robot spec YAML (config/robot_*.yaml)"),
    "out": ("", "episode store path; created if absent, appended to otherwise"),
    "auto_episodes": (False, "start/commit episodes on the events topic (reset/terminal/truncated)"),
    "on_shutdown": ("commit", "what happens to an open episode on SIGINT/SIGTERM: commit|discard"),
    "source": ("teleop", "episode source label: teleop|scripted|sim"),
    "sample_on": ("", "'' keeps the spec's choice; 'timer' samples at rate_hz; or a topic"),
    "status_rate": (2.0, "Hz of ~/status and /diagnostics"),
    "max_queued_steps": (2000, "steps waiting for the store writer before samples are dropped"),
    "flush_period_s": (1.0, "seconds between writes of the open episode's buffered rows"),
    "reward_wait_s": (0.2, "at an episode's end, how long samples wait for their reward"),
    "pair_timeout_s": (2.0, "exact pairing: how long an episode's end waits for its end report, "
                            "last pairs and rewards"),
    "min_part_steps": (10, "steps a part of an episode before a gap needs to be committed "
                           "(shorter ones are discarded)"),
    "commit_wait_s": (5.0, "how long ~/stop_episode waits for the writer to confirm the commit "
                           "on disk before answering 'commit pending'"),
    "reset_service": ("", "auto_episodes: std_srvs/Trigger called once all required streams "
                          "are fresh, to start the first episode (e.g. /sim/reset)"),
}
MESSAGE_TYPES = {JOINT_STATE: JointState, FLOAT64_ARRAY: Float64MultiArray, FLOAT64: Float64,
                 IMAGE: Image, STRING: String}
QUEUE_DEPTH = {JOINT_STATE: 100, FLOAT64_ARRAY: 100, FLOAT64: 100, IMAGE: 5, STRING: 20}
WARN_THROTTLE_S = 2.0


class RecorderNode(Node):
    def __init__(self, overrides=()):
        super().__init__("recorder", parameter_overrides=list(overrides))
        self.recorder = None
        try:
            p = {name: self.declare_parameter(name, default).value
                 for name, (default, _) in PARAMETERS.items()}
        except ParameterException as e:  # e.g. a string given for a number
            raise ConfigError(f"recorder setting: {e}") from None
        if not p["spec"] or not p["out"]:
            raise ConfigError("recorder needs a spec and an out path (--spec/--out or the "
                              "spec/out parameters)")
        spec = load_spec(p["spec"])
        sample_on = {"": spec.sample_on, "timer": None}.get(p["sample_on"], p["sample_on"])
        if sample_on is not None:  # a topic given as parameter: resolve to its stream name
            sample_on = next((s.name for s in spec.streams.values()
                              if sample_on in (s.name, s.topic)), sample_on)
        settings = {name: p[name] for name in (
            "source", "auto_episodes", "on_shutdown", "reward_wait_s", "pair_timeout_s",
            "commit_wait_s", "min_part_steps")}
        # every setting is checked before the dataset is created or opened
        check_settings(spec, sample_on=sample_on, status_rate=p["status_rate"],
                       max_queued_steps=p["max_queued_steps"],
                       flush_period_s=p["flush_period_s"], **settings)
        store = open_store(p["out"], spec)
        writer = StoreWriterThread(store, p["max_queued_steps"], flush_period_s=p["flush_period_s"])
        self.recorder = Recorder(spec, writer, first_episode=store.n_episodes,
                                 sample_on=sample_on, notify=self.notify, **settings)
        atexit.register(self.settle)

        # The executor handles the messages ready at one wake-up in subscription order. The sim
        # publishes "reset" before the episode's first state: with the events first, that state
        # is not taken for a pre-reset one (and its sample skipped) when both arrive together.
        for s in sorted(spec.streams.values(), key=lambda s: s.role != "events"):
            self.create_subscription(MESSAGE_TYPES[s.msg_type], s.topic,
                                     self._callback(s.name, s.msg_type, s.role),
                                     QUEUE_DEPTH[s.msg_type])
        # Timer mode samples on this tick; with sample_on it only ends reward and pairing waits.
        tick_period = 1.0 / spec.rate_hz
        self.create_timer(tick_period if sample_on is None else max(tick_period, 0.05),
                          self.on_tick)
        self.reset_client = self.create_client(Trigger, p["reset_service"]) if (
            p["auto_episodes"] and p["reset_service"]) else None
        self.create_service(Trigger, "~/start_episode", self.on_start)
        self.create_service(SetBool, "~/stop_episode", self.on_stop)
        self.create_service(Trigger, "~/discard_episode", self.on_discard)
        self.status_pub = self.create_publisher(
            String, "~/status", QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self.create_timer(1.0 / p["status_rate"], self.publish_status)
        self.get_logger().info(
            f"recording {spec.task} to {p['out']} (episode {store.n_episodes} next), sampling "
            f"{'on ' + sample_on if sample_on else f'at {spec.rate_hz:g} Hz'}, "
            f"auto_episodes {p['auto_episodes']}")

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    def _callback(self, stream: str, msg_type: str, role: str):
        if role == "events":
            def on_event(msg: String) -> None:
                ok, message = self.recorder.on_event(msg.data, self._now())
                if not ok:
                    self.get_logger().warning(f"{msg.data}: {message}")
                elif msg.data == "reset" and self.recorder.auto_episodes:
                    self.get_logger().info(message)
            return on_event

        fields = {JOINT_STATE: convert.joint_state_fields, IMAGE: convert.image_fields}.get(
            msg_type, convert.data_fields)
        has_header = msg_type in (JOINT_STATE, IMAGE)

        def on_message(msg, info) -> None:
            now = self._now()
            # Headerless messages (and unstamped headers) are stamped with their receive time.
            stamp = convert.time_seconds(msg.header.stamp) if has_header else 0.0
            problem = self.recorder.on_message(stream, fields(msg), stamp or now, now,
                                               convert.publication_sequence(info))
            if problem:
                self.get_logger().warning(f"skipped malformed message: {problem}",
                                          throttle_duration_sec=WARN_THROTTLE_S)
        return on_message

    def on_tick(self) -> None:
        now = self._now()
        self.recorder.on_tick(now)
        # Without this, a recorder started after the sim's first reset waits a whole episode.
        if (self.reset_client is not None and self.reset_client.service_is_ready()
                and not self.recorder.stale_streams(now, required_only=True)):
            self.get_logger().info(f"calling {self.reset_client.srv_name} to start an episode")
            self.reset_client.call_async(Trigger.Request())
            self.reset_client = None

    def on_start(self, request, response):
        response.success, response.message = self.recorder.start_episode(self._now())
        self.get_logger().info(response.message)
        return response

    def on_stop(self, request, response):
        # Answers once the writer confirmed the commit (or after commit_wait_s: "commit
        # pending"); the writer is its own thread, so waiting here does not stall it.
        response.success, response.message = self.recorder.stop_episode(
            request.data, self._now(), wait_s=self.recorder.commit_wait_s)
        return response

    def on_discard(self, request, response):
        response.success, response.message = self.recorder.discard_episode()
        return response

    def publish_status(self) -> None:
        status = self.recorder.status(self._now())
        self.status_pub.publish(convert.status_msg(status))
        required_stale = self.recorder.stale_streams(self._now(), required_only=True)
        problems = [f"stale: {', '.join(required_stale)}"] if required_stale else []
        if status["writer_error"]:  # episodes are being lost: until a commit succeeds again
            problems.append(f"writer: {status['writer_error']}")
        if status["queue_dropped"] or status["dropped_ticks"] or status["gaps"]:
            problems.append("dropped samples")
        message = "; ".join(problems) or status["state"]
        level = (DiagnosticStatus.ERROR if status["writer_error"] else
                 DiagnosticStatus.WARN if problems else DiagnosticStatus.OK)
        self.diag_pub.publish(convert.diagnostics_msg(
            f"{self.get_name()}: {self.recorder.spec.task}", self.recorder.spec.task,
            level, message, status, self.get_clock().now().to_msg()))

    def notify(self, message: str, error: bool = False) -> None:
        # Once the context is shut down (the shutdown commit), the node's logger can no longer
        # publish to /rosout and rcl complains on every message; a logger of another name has
        # no /rosout publisher and still reaches the console and the log file.
        logger = self.get_logger() if self.context.ok() else rclpy.logging.get_logger(
            f"{self.get_name()}.shutdown")
        (logger.error if error else logger.info)(message)

    def settle(self) -> None:
        """Commit or discard the open episode and close the store, once.

        Runs from destroy_node (run_node's finally) and, should a second SIGINT interrupt the
        shutdown before that (Ctrl-C under ros2 launch delivers SIGINT twice: terminal and
        launch), from atexit. Further signals are ignored so that they cannot cut the commit.
        """
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        recorder, self.recorder = self.recorder, None
        if recorder is not None:
            self.notify(f"shutting down: {recorder.shutdown()}")

    def destroy_node(self) -> None:
        self.settle()
        super().destroy_node()


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="robot-stack record",
        description="Record a robot's ROS 2 topics, as described by a robot spec, into an "
        "episode store (node `recorder`). Options override the ROS parameters of the same name "
        "(e.g. from --ros-args --params-file config/recorder.yaml).")
    parser.add_argument("--spec", help="robot spec YAML, e.g. config/robot_cheetah_sim.yaml")
    parser.add_argument("--out", help="episode store path (created, or appended to)")
    parser.add_argument("--auto-episodes", action=argparse.BooleanOptionalAction, default=None,
                        help="start and commit episodes on the sim's episode_events")
    parser.add_argument("--on-shutdown", choices=("commit", "discard"),
                        help="what to do with an open episode on Ctrl-C/SIGTERM (default commit)")
    parser.add_argument("--source", help="episode source label (default teleop)")
    parser.add_argument("--sample-on",
                        help="'timer' (sample at the spec's rate_hz) or a topic; default: spec")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    options, ros_args = parse_node_args(build_parser(), argv)
    overrides = parameter_overrides(options, {
        "spec": "spec", "out": "out", "auto_episodes": "auto_episodes",
        "on_shutdown": "on_shutdown", "source": "source", "sample_on": "sample_on"})
    try:
        return run_node(ros_args, lambda: RecorderNode(overrides))
    except RobotStackError as e:
        print(f"recorder: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
