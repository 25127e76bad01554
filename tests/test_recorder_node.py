"""The recorder node over real DDS: stale refusal, malformed input, SIGKILL, restart, SIGTERM."""
from __future__ import annotations

import math
import signal

import numpy as np
import pytest
import yaml

from robot_stack.data import EpisodeStore

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from ros_nodes import convert  # noqa: E402
from rosutil import NodeProcess, Probe, last_status, unique_domain_id  # noqa: E402

SPEC = {
    "task": "probe-robot",
    "robot": {"name": "probe-robot"},
    "rate_hz": 20,
    "observation": [
        {"name": "qpos", "topic": "joint_states", "type": "JointState", "field": "position",
         "joints": ["a", "b"]},
        {"name": "qvel", "topic": "joint_states", "type": "JointState", "field": "velocity",
         "joints": ["a", "b"]},
    ],
    "action": {"topic": "commands", "size": 2, "low": -1.0, "high": 1.0},
    "images": [{"name": "rgb", "topic": "camera", "height": 24, "width": 32, "encoding": "rgb8"}],
}
GOOD_IMAGE = np.full((24, 32, 3), 7, np.uint8)


class Publisher:
    """Good messages with known values, and every kind of bad one, from the test process."""

    def __init__(self, probe: Probe):
        self.probe = probe
        node = probe.node
        self.joints = node.create_publisher(JointState, "joint_states", 100)
        self.commands = node.create_publisher(Float64MultiArray, "commands", 100)
        self.camera = node.create_publisher(Image, "camera", 100)
        self.bad_sent = {"joint_states": 0, "commands": 0, "camera": 0}

    def wait_for_recorder(self, recorder: NodeProcess) -> None:
        self.probe.spin_until(lambda: all(p.get_subscription_count() > 0 for p in (
            self.joints, self.commands, self.camera)), 20, "the recorder's subscriptions",
            recorder)

    def good(self) -> None:
        stamp = self.probe.node.get_clock().now().to_msg()
        # joint order differs from the spec's: the recorder reorders by name
        self.joints.publish(convert.joint_state_msg(["b", "a"], [2.0, 1.0], [0.5, -0.5], stamp))
        self.commands.publish(convert.command_msg([0.25, -0.25]))
        self.camera.publish(convert.image_msg(GOOD_IMAGE, "rgb8", stamp))

    def bad(self) -> None:
        stamp = self.probe.node.get_clock().now().to_msg()
        for msg in (convert.joint_state_msg(["a", "c"], [9.0, 9.0], [9.0, 9.0], stamp),
                    convert.joint_state_msg(["a", "b"], [math.nan, 9.0], [9.0, 9.0], stamp),
                    convert.joint_state_msg(["a", "b"], [9.0, 9.0], [9.0], stamp)):
            self.joints.publish(msg)
        for data in ([0.9, 0.9, 0.9], [math.nan, 0.9]):
            self.commands.publish(convert.command_msg(data))
        for pixels, encoding in ((np.full((24, 32, 3), 99, np.uint8), "bgr8"),
                                 (np.full((12, 32, 3), 99, np.uint8), "rgb8")):
            self.camera.publish(convert.image_msg(pixels, encoding, stamp))
        for stream, n in (("joint_states", 3), ("commands", 2), ("camera", 2)):
            self.bad_sent[stream] += n

    def run(self, seconds: float, with_bad: bool = True) -> None:
        for i in range(int(seconds * 50)):  # 50 Hz, a bad batch every 5th period
            self.good()
            if with_bad and i % 5 == 0:
                self.bad()
            self.probe.spin_for(0.02)


def test_recorder_refuses_stale_skips_malformed_and_keeps_committed_episodes(tmp_path):
    spec_path, out = tmp_path / "spec.yaml", tmp_path / "rec.zarr"
    spec_path.write_text(yaml.safe_dump(SPEC))
    domain = unique_domain_id()
    probe = Probe(domain)
    status = probe.collect(String, "/recorder/status", latched=True)
    recorder = NodeProcess(["record", "--spec", str(spec_path), "--out", str(out)], domain)
    try:
        pub = Publisher(probe)
        pub.wait_for_recorder(recorder)
        refused = probe.call(Trigger, "/recorder/start_episode", Trigger.Request())
        assert not refused.success
        assert "joint_states (never received)" in refused.message
        assert "commands (never received)" in refused.message

        pub.run(0.4)
        started = probe.call(Trigger, "/recorder/start_episode", Trigger.Request())
        assert started.success, started.message
        pub.run(1.2)
        stopped = probe.call(SetBool, "/recorder/stop_episode", SetBool.Request(data=True))
        assert stopped.success and stopped.message.startswith("committed episode 0 (")
        steps = int(stopped.message.split("(")[1].split()[0])
        pub.run(0.2, with_bad=False)  # lets the last bad messages reach the status
        probe.spin_until(lambda: status and last_status(status)["malformed"] == pub.bad_sent,
                         10, "malformed counts", recorder)

        # Episode 1 is open and partly flushed when the recorder is killed.
        assert probe.call(Trigger, "/recorder/start_episode", Trigger.Request()).success
        pub.run(1.5, with_bad=False)
        probe.spin_until(lambda: last_status(status)["episode_steps"] > 10, 10, "episode 1 steps")
        recorder.stop(signal.SIGKILL)

        store = EpisodeStore.open(out)
        assert store.n_episodes == 1 and store.episode_meta["success"].tolist() == [1]
        assert "reward" not in store.keys  # the spec has no reward topic
        episode = store.episode(0)
        assert len(episode["action"]) == steps > 15
        np.testing.assert_array_equal(episode["observation"], [[1.0, 2.0, -0.5, 0.5]] * steps)
        np.testing.assert_array_equal(episode["action"], [[0.25, -0.25]] * steps)
        assert (episode["camera/rgb"] == 7).all()
        assert np.isfinite(episode["stamp/joint_states"]).all()
        assert (np.diff(episode["timestamp"]) > 0).all()
        store.close()

        # A restarted recorder appends after the committed episode; SIGTERM exits cleanly.
        status.clear()
        recorder = NodeProcess(["record", "--spec", str(spec_path), "--out", str(out)], domain)
        probe.spin_until(lambda: status, 20, "the restarted recorder's status", recorder)
        assert last_status(status)["episode"] == 1
        assert recorder.stop(signal.SIGTERM) == 0, recorder.output()
    finally:
        recorder.stop(signal.SIGKILL)
        probe.close()
