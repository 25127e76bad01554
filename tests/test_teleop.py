"""Teleop sources: key and joystick mapping logic, and the teleop node over real DDS."""
from __future__ import annotations

import os
import sys
import subprocess
import termios
import time
from pathlib import Path

import numpy as np
import pytest

from robot_stack.errors import ConfigError
from robot_stack.package_config import config_file
from robot_stack.teleop import (DISCARD, START, STOP_FAILURE, STOP_SUCCESS, CallablePolicy,
                                JoyMapping, JoyTeleop, KeyboardMapping, KeyboardTeleop,
                                load_policy_factory)

CONFIG = Path(__file__).resolve().parent.parent / "config"
KEYS = {"increase": "123", "decrease": "qwe", "step": 0.25, "zero": " 0", "start": "b",
        "stop_success": "s", "stop_failure": "f", "discard": "x"}


# ----- keyboard -----

def test_keyboard_keys_move_clip_and_zero_the_action():
    keyboard = KeyboardTeleop(KeyboardMapping.from_dict(KEYS), act_dim=2, low=-0.5, high=0.5)
    for key in "11w":
        assert keyboard.press(key) is None
    assert keyboard.action.tolist() == [0.5, -0.25]
    keyboard.press("1")  # already at the bound
    keyboard.press("3")  # no third dimension on this robot: ignored
    keyboard.press("z")  # unmapped key: ignored
    assert keyboard.action.tolist() == [0.5, -0.25]
    keyboard.press("q")
    keyboard.press("2")
    assert keyboard.action.tolist() == [0.25, 0.0]
    keyboard.press(" ")
    assert keyboard.action.tolist() == [0.0, 0.0]


def test_keyboard_episode_keys_make_requests_without_moving():
    keyboard = KeyboardTeleop(KeyboardMapping.from_dict(KEYS), act_dim=3, low=-1, high=1)
    assert [keyboard.press(k) for k in "bsfx"] == [START, STOP_SUCCESS, STOP_FAILURE, DISCARD]
    assert keyboard.action.tolist() == [0.0, 0.0, 0.0]


def test_steps_return_exactly_to_zero():
    keyboard = KeyboardTeleop(KeyboardMapping.from_dict(dict(KEYS, step=0.1)), 1, -1, 1)
    for key in "111qqq":
        keyboard.press(key)
    assert keyboard.action[0] == 0.0


@pytest.mark.parametrize("change, message", [
    ({"decrease": "qw"}, "one key per action dimension"),
    ({"discard": "1"}, "more than one thing"),
    ({"step": 0}, "'step' must be > 0"),
    ({"start": "bb"}, "single keys"),
    ({"speed": 2}, "unknown entries"),
])
def test_keyboard_mapping_errors_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        KeyboardMapping.from_dict(dict(KEYS, **change))


def test_keyboard_mapping_must_cover_the_action():
    with pytest.raises(ConfigError, match="keys for 3 action dimensions, the robot has 6"):
        KeyboardTeleop(KeyboardMapping.from_dict(KEYS), act_dim=6, low=-1, high=1)


def test_shipped_keyboard_mapping_covers_cheetah():
    mapping = KeyboardMapping.from_yaml(CONFIG / "teleop_keyboard.yaml")
    keyboard = KeyboardTeleop(mapping, act_dim=6, low=-1, high=1)
    assert [keyboard.press(k) for k in "bsfx"] == [START, STOP_SUCCESS, STOP_FAILURE, DISCARD]


# ----- joystick -----

JOY = {"axes": [{"axis": 1, "action": 0, "deadzone": 0.2},
                {"axis": 3, "action": 2, "scale": 2.0, "invert": True}],
       "buttons": {"start": 7, "stop_success": 0, "discard": 2}}


def test_joystick_axes_map_with_deadzone_scale_and_invert():
    joy = JoyTeleop(JoyMapping.from_dict(JOY), act_dim=3, low=-1, high=1)
    joy.update([0.0, 0.1, 0.0, 0.0], [])
    assert joy.action.tolist() == [0.0, 0.0, 0.0]  # inside the deadzone
    joy.update([0.0, 0.6, 0.0, 0.25], [])
    np.testing.assert_allclose(joy.action, [0.5, 0.0, -0.5])  # (0.6-0.2)/(1-0.2); -2*0.25
    joy.update([0.0, -1.0, 0.0, -0.9], [])
    np.testing.assert_allclose(joy.action, [-1.0, 0.0, 1.0])  # 2*0.9 clipped to the bound
    joy.update([0.0, 0.5], [])  # a message with fewer axes: missing axes read as centred
    assert joy.action[2] == 0.0


def test_joystick_buttons_request_once_per_press():
    joy = JoyTeleop(JoyMapping.from_dict(JOY), act_dim=3, low=-1, high=1)
    pressed = [0] * 8
    assert joy.update([0.0] * 4, pressed) == []
    pressed[7] = 1
    assert joy.update([0.0] * 4, pressed) == [START]
    assert joy.update([0.0] * 4, pressed) == []  # held: no repeat
    pressed[7], pressed[0], pressed[1] = 0, 1, 1  # button 1 is not mapped
    assert joy.update([0.0] * 4, pressed) == [STOP_SUCCESS]


@pytest.mark.parametrize("change, message", [
    ({"axes": []}, "non-empty list"),
    ({"axes": [{"axis": 0, "action": 0, "gain": 1}]}, r"axes\[0\]"),
    ({"axes": [{"axis": 0, "action": 0, "deadzone": 1.0}]}, "deadzone"),
    ({"axes": [{"axis": 0, "action": 1}, {"axis": 1, "action": 1}]}, "more than one axis"),
    ({"buttons": {"pause": 3}}, "'buttons' maps"),
    ({"buttons": {"start": 3, "discard": 3}}, "more than one episode request"),
])
def test_joystick_mapping_errors_name_the_problem(change, message):
    with pytest.raises(ConfigError, match=message):
        JoyMapping.from_dict(dict(JOY, **change))


def test_joystick_mapping_must_fit_the_action():
    with pytest.raises(ConfigError, match=r"indices \[2\]"):
        JoyTeleop(JoyMapping.from_dict(JOY), act_dim=2, low=-1, high=1)


def test_shipped_joystick_mappings_fit_cheetah():
    paths = sorted(CONFIG.glob("joy_*.yaml"))
    assert paths
    for path in paths:
        JoyTeleop(JoyMapping.from_yaml(path), act_dim=6, low=-1, high=1)


def test_mapping_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        JoyMapping.from_yaml(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("axes: [")
    with pytest.raises(ConfigError, match="not valid YAML"):
        JoyMapping.from_yaml(tmp_path / "bad.yaml")


# ----- shipped config files -----

def test_config_files_are_found_in_the_checkout_or_the_installed_share_dir(tmp_path,
                                                                           monkeypatch):
    assert config_file("teleop_keyboard.yaml") == CONFIG / "teleop_keyboard.yaml"
    # An installed package: share/robot_stack/config under a prefix in the ament index.
    (tmp_path / "share/ament_index/resource_index/packages").mkdir(parents=True)
    (tmp_path / "share/ament_index/resource_index/packages/robot_stack").touch()
    installed = tmp_path / "share/robot_stack/config"
    installed.mkdir(parents=True)
    (installed / "joy_installed.yaml").write_text("axes: {}\n")
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))
    assert config_file("joy_installed.yaml") == installed / "joy_installed.yaml"
    with pytest.raises(ConfigError, match=r"'robot_foo_sim.yaml' not found; looked in .*"
                       + str(installed)):
        config_file("robot_foo_sim.yaml")


# ----- saved-policy hook -----

def test_callable_policy_adds_noise_and_clips():
    policy = CallablePolicy(lambda obs: obs[:2] * 10, noise=0.0, seed=0, low=[-1, -1], high=[1, 1])
    assert policy.act(np.array([0.05, -0.5, 3.0])).tolist() == [0.5, -1.0]
    noisy = CallablePolicy(lambda obs: np.zeros(2), noise=0.1, seed=0, low=[-1, -1], high=[1, 1])
    actions = np.array([noisy.act(np.zeros(3)) for _ in range(200)])
    assert 0.05 < actions.std() < 0.2
    with pytest.raises(ConfigError, match="shape"):
        CallablePolicy(lambda obs: np.zeros(3), 0.0, 0, [-1, -1], [1, 1]).act(np.zeros(3))


def test_policy_factory_errors_name_the_problem():
    with pytest.raises(ConfigError, match="package.module:factory"):
        load_policy_factory("numpy.zeros")
    with pytest.raises(ConfigError, match="cannot import"):
        load_policy_factory("no_such_module_xyz:make")
    with pytest.raises(ConfigError, match="no callable 'nothing'"):
        load_policy_factory("numpy:nothing")
    assert load_policy_factory("numpy:zeros") is np.zeros


# ----- the node over DDS -----

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import JointState, Joy  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from rosutil import last_status, ros  # noqa: E402,F401 (ros: fixture)


def test_scripted_teleop_drives_the_sim_cheetah_forward(ros):
    probe, start = ros
    states = probe.collect(JointState, "joint_states")
    status = probe.collect(String, "/sim/status", latched=True)
    sim = start("sim", "serve", "--task", "cheetah-run")
    teleop = start("teleop", "--source", "scripted", "--task", "cheetah-run", "--noise", "0.1")
    probe.spin_until(lambda: states and states[-1].position[0] > 1.0, 40,
                     "the cheetah to run 1 m forward", teleop)
    probe.spin_until(lambda: status and last_status(status)["commands_accepted"] > 50, 20,
                     "the sim's status", sim)
    assert last_status(status)["rejected"] == 0
    assert teleop.stop() == 0, teleop.output()
    assert sim.stop() == 0, sim.output()


def test_sim_cheetah_stays_put_without_commands(ros):
    # The baseline of the test above: without the teleop, root x stays near its start.
    probe, start = ros
    states = probe.collect(JointState, "joint_states")
    sim = start("sim", "serve", "--task", "cheetah-run")
    probe.spin_until(lambda: len(states) > 300, 40, "3 s of joint states", sim)
    assert abs(states[-1].position[0]) < 0.5
    assert sim.stop() == 0, sim.output()


def test_keyboard_teleop_in_a_terminal_publishes_key_commands(ros):
    probe, start = ros
    commands = probe.collect(Float64MultiArray, "commands")
    controller, terminal = os.openpty()
    try:
        teleop = start("teleop", "--source", "keyboard", "--task", "cheetah-run", stdin=terminal)

        def send(keys: str, expected: list[float]):
            os.write(controller, keys.encode())
            probe.spin_until(lambda: commands and list(commands[-1].data) == pytest.approx(expected),
                             20, f"command {expected} after keys {keys!r}", teleop)

        probe.spin_until(lambda: commands, 30, "the first command", teleop)
        assert list(commands[-1].data) == [0.0] * 6
        send("113", [0.2, 0.0, 0.1, 0.0, 0.0, 0.0])
        send("e6", [0.2, 0.0, 0.0, 0.0, 0.0, 0.1])
        send("1" * 12, [1.0, 0.0, 0.0, 0.0, 0.0, 0.1])  # clipped at the action bound
        send(" ", [0.0] * 6)
        os.write(controller, b"b")  # episode key: no recorder running, so a warning, no crash
        probe.spin_until(lambda: "/recorder/start_episode is not available" in teleop.output(),
                         20, "the warning about the missing recorder", teleop)

        assert teleop.stop() == 0, teleop.output()
        assert "Traceback" not in teleop.output()
        # The terminal is back in canonical mode with echo once the node exits.
        lflags = termios.tcgetattr(terminal)[3]
        assert lflags & termios.ICANON and lflags & termios.ECHO
    finally:
        os.close(controller)
        os.close(terminal)


def test_joy_teleop_maps_joy_messages_to_commands(ros):
    probe, start = ros
    commands = probe.collect(Float64MultiArray, "commands")
    joy = probe.node.create_publisher(Joy, "joy", 10)
    teleop = start("teleop", "--source", "joy", "--mapping", str(CONFIG / "joy_xbox.yaml"))
    probe.spin_until(lambda: joy.get_subscription_count() > 0, 30, "the joy subscription", teleop)
    # config/joy_xbox.yaml: left stick up (axis 1) -> action 0, d-pad up (axis 7) -> action 2,
    # right stick up (axis 4) -> action 3; deadzone 0.1 on the sticks.
    joy.publish(Joy(axes=[0.0, 0.55, 0.0, 0.0, -1.0, 0.0, 0.0, 1.0], buttons=[0] * 8))
    probe.spin_until(lambda: commands and commands[-1].data[0] > 0, 20, "the mapped command",
                     teleop)
    np.testing.assert_allclose(commands[-1].data, [0.5, 0.0, 1.0, -1.0, 0.0, 0.0], atol=1e-6)
    assert teleop.stop() == 0, teleop.output()


def test_keyboard_teleop_needs_a_terminal(ros):
    _, start = ros
    teleop = start("teleop", "--source", "keyboard", stdin=open(os.devnull))
    assert teleop.proc.wait(60) == 2
    assert "stdin is not a tty" in teleop.output()


def test_teleop_node_help_lists_sources():
    out = subprocess.run([sys.executable, "-m", "robot_stack.cli", "teleop", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "keyboard,joy,scripted" in out.stdout


def test_keyboard_episode_keys_drive_the_recorder(ros, tmp_path):
    """sim + recorder + keyboard teleop: b starts, s/f stop with a label, x discards."""
    from robot_stack.data import EpisodeStore

    probe, start = ros
    out = tmp_path / "teleop.zarr"
    controller, terminal = os.openpty()
    try:
        sim = start("sim", "serve", "--task", "cheetah-run")
        recorder = start("record", "--spec", str(CONFIG / "robot_cheetah_sim.yaml"),
                         "--out", str(out))
        teleop = start("teleop", "--source", "keyboard", "--task", "cheetah-run", stdin=terminal)

        def press(key: str, answer: str):
            before = teleop.output().count(answer)
            os.write(controller, key.encode())
            probe.spin_until(lambda: teleop.output().count(answer) > before, 30,
                             f"{answer!r} after key {key!r}", teleop)

        # The recorder records the commands the sim applied (the spec's action.applied): wait
        # until the sim hears the teleop, then retry until the recorder hears the sim.
        status = probe.collect(String, "/sim/status", latched=True)
        probe.spin_until(lambda: status and last_status(status)["commands_accepted"] > 0, 40,
                         "the sim to receive the teleop's commands", sim)
        deadline = time.monotonic() + 40
        while "start: done" not in teleop.output():
            assert time.monotonic() < deadline, teleop.output() + recorder.output()
            os.write(controller, b"b")
            probe.spin_for(0.5)
        os.write(controller, b"11")
        probe.spin_for(0.5)
        press("s", "stop_success: done")
        press("b", "start: done")
        probe.spin_for(0.3)
        press("x", "discard: done")
        press("b", "start: done")
        probe.spin_for(0.3)
        press("f", "stop_failure: done")
        for process in (teleop, recorder, sim):
            assert process.stop() == 0, process.output()
    finally:
        os.close(controller)
        os.close(terminal)

    store = EpisodeStore.open(out, mode="r")
    assert store.n_episodes == 2  # the discarded one is gone
    assert store.episode_meta["success"].tolist() == [1, 0]
    actions = store.episode(0)["action"]
    assert np.allclose(actions[-1], [0.2, 0, 0, 0, 0, 0])
