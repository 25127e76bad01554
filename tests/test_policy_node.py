"""The policy node over real DDS, in its own process: closed loop with the sim node, safe actions
on stale and NaN observations, the latching e-stop and disabling, for an effort robot (the sim's)
and a position robot (a spec written here over the same topics), and the refusal of a
mismatched model.

Closed loop: the sim runs in lockstep (each step applies the command that answered the state it
published), the policy node answers each state (trigger observation), and both paths feed the
policy the same float32 observation (float64 over DDS, cast in the runtime). So the episode
return over DDS equals `robot-stack eval`'s (evaluate_onnx) up to float summation: tolerance
1e-6 relative. One late or missing answer shifts an action by a step and changes the return by
far more (and shows as a lockstep timeout, which is asserted to be zero).
"""
from __future__ import annotations


import numpy as np
import onnx
import pytest
import yaml

from deployutil import TASK, exported_policy
from robot_stack.deploy.evaluate import evaluate_onnx
from sim import make_task

rclpy = pytest.importorskip("rclpy")
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from std_srvs.srv import SetBool, Trigger  # noqa: E402

from rosutil import REPO, last_status, ros  # noqa: E402,F401

EPISODE_STEPS = 100
SEED = 7
CHEETAH_SPEC = str(REPO / "config/robot_cheetah_sim.yaml")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return exported_policy(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def policy_file(exported):
    return exported[1]


def test_closed_loop_over_dds_matches_in_process_eval(ros, policy_file):
    probe, start = ros
    policy_status = probe.collect(String, "/policy/status", latched=True)
    sim_status = probe.collect(String, "/sim/status", latched=True)
    policy = start("deploy", "--policy", str(policy_file), "--spec", CHEETAH_SPEC,
                   "--trigger", "observation", "--stale-timeout-s", "60")
    probe.spin_until(lambda: policy_status, 60, "the policy node's status", policy)
    sim = start("sim", "serve", "--task", TASK, "--seed", str(SEED), "--realtime-factor", "0",
                "--lockstep", "--lockstep-timeout", "30", "--no-auto-reset",
                "--max-episode-steps", str(EPISODE_STEPS))
    # A generous lockstep timeout: on a loaded CI machine an answer can take over a second, and
    # the sim must wait for it rather than step with the held command.

    def episode_over(episodes: int):
        return lambda: sim_status and last_status(sim_status)["episodes"] == episodes and \
            last_status(sim_status)["episode_over"]

    # The first episode can start before discovery has matched the nodes; the second cannot.
    probe.spin_until(episode_over(1), 120, "the end of the first episode", sim)
    timeouts_before = last_status(sim_status)["lockstep_timeouts"]
    assert probe.call(Trigger, "/sim/reset", Trigger.Request()).success
    probe.spin_until(episode_over(2), 120, "the end of the second episode", sim)
    status = last_status(sim_status)
    assert status["episode_step"] == EPISODE_STEPS
    assert status["lockstep_timeouts"] == timeouts_before, "an answer came late: not lockstep"

    # episode i of the sim starts from seed + i - 1
    expected = evaluate_onnx(str(policy_file), TASK, episodes=1, seed=SEED + 1,
                             max_steps=EPISODE_STEPS)["mean_return"]
    assert status["episode_return"] == pytest.approx(expected, rel=1e-6, abs=1e-9)
    probe.spin_until(lambda: last_status(policy_status)["policy_actions"] >= EPISODE_STEPS + 1,
                     10, "the policy's counters", policy)
    assert last_status(policy_status)["safe_actions_total"] == 0
    assert policy.stop() == 0 and sim.stop() == 0


def joint_state(values: np.ndarray | None = None) -> JointState:
    task = make_task(TASK)
    task.reset(seed=0)
    qpos, qvel = task.qpos_qvel()
    if values is not None:
        qpos = np.full_like(qpos, values)
    msg = JointState(name=list(task.joint_names))
    msg.position, msg.velocity = qpos.tolist(), qvel.tolist()
    return msg


def test_stale_nan_estop_and_enable_give_safe_commands(ros, policy_file):
    probe, start = ros
    status_msgs = probe.collect(String, "/policy/status", latched=True)
    commands = probe.collect(Float64MultiArray, "commands")
    publisher = probe.node.create_publisher(JointState, "joint_states", 10)
    estop = probe.node.create_publisher(Bool, "estop", 10)
    feed = {"msg": None}  # what the probe publishes at 50 Hz; None = nothing (a dead sensor)
    probe.node.create_timer(0.02, lambda: feed["msg"] and publisher.publish(feed["msg"]))
    policy = start("deploy", "--policy", str(policy_file), "--spec", CHEETAH_SPEC,
                   "--stale-timeout-s", "0.2")  # an effort robot: its safe action is zero

    def status():
        return last_status(status_msgs) if status_msgs else {}

    def reach(state: str, what: str):
        probe.spin_until(lambda: status().get("state") == state, 30, what, policy)
        commands.clear()
        probe.spin_for(0.15)  # the commands published in this state, at 100 Hz
        assert len(commands) >= 5
        return np.array([c.data for c in commands])

    valid = joint_state()
    feed["msg"] = valid
    assert np.abs(reach("running", "policy actions")).max() > 0
    assert status()["provider"] == "CPUExecutionProvider" and status()["trigger"] == "timer"

    feed["msg"] = None
    assert not reach("safe:stale_observation", "the stale observation").any()

    feed["msg"] = joint_state(np.nan)
    assert not reach("safe:bad_observation", "the NaN observation").any()
    assert "non-finite" in status()["observation_problem"]

    feed["msg"] = valid
    assert np.abs(reach("running", "recovery after NaN")).max() > 0

    publisher.publish(b"\x00\x01\x00\x00" + b"\xff" * 12)  # bytes no JointState reads as
    probe.spin_until(lambda: status().get("unreadable_messages") == 1, 10,
                     "the unreadable message counted", policy)
    assert np.abs(reach("running", "policy actions past the unreadable message")).max() > 0

    estop.publish(Bool(data=True))
    assert not reach("estop", "the e-stop").any()
    probe.spin_for(0.5)  # fresh observations all along: the e-stop stays latched
    assert status()["estop"] and not np.array([c.data for c in commands[-5:]]).any()
    reply = probe.call(Trigger, "/policy/reset_estop", Trigger.Request())
    assert reply.success and reply.message == "e-stop cleared"
    assert np.abs(reach("running", "policy actions after the reset")).max() > 0

    assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=False)).success
    assert not reach("disabled", "disabled").any()
    assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=True)).success
    reach("running", "enabled again")
    counts = status()["safe_actions"]
    assert {"stale_observation", "bad_observation", "estop", "disabled"} <= set(counts)
    assert policy.stop() == 0


def test_a_model_for_another_robot_is_refused_with_one_message(ros, policy_file):
    _, start = ros
    policy = start("deploy", "--policy", str(policy_file), "--spec",
                   str(REPO / "config/robot_walker_sim.yaml"))
    assert policy.proc.wait(timeout=120) == 2
    output = policy.output()
    errors = [line for line in output.splitlines() if "error:" in line]
    assert len(errors) == 1 and "does not match" in errors[0] and "joint names" in errors[0]
    assert "Traceback" not in output


def test_a_position_robot_holds_the_positions_measured_at_the_stop(ros, exported, tmp_path):
    # The sim policy's file, its metadata saying position (export refuses to relabel a run's
    # data so), run against a spec over the sim's topics that says so: the node's stop is
    # under test, not what the commands mean.
    _, exported_file = exported
    model = onnx.load(str(exported_file))
    next(p for p in model.metadata_props if p.key == "command_interface").value = '"position"'
    policy_file = tmp_path / "position.onnx"
    onnx.save(model, str(policy_file))
    spec = yaml.safe_load(open(CHEETAH_SPEC))
    spec["action"]["command_interface"] = "position"
    spec_file = tmp_path / "position.yaml"
    spec_file.write_text(yaml.safe_dump(spec))

    probe, start = ros
    status_msgs = probe.collect(String, "/policy/status", latched=True)
    commands = probe.collect(Float64MultiArray, "commands")
    publisher = probe.node.create_publisher(JointState, "joint_states", 10)
    estop = probe.node.create_publisher(Bool, "estop", 10)
    feed = {"msg": joint_state()}
    probe.node.create_timer(0.02, lambda: publisher.publish(feed["msg"]))
    policy = start("deploy", "--policy", str(policy_file), "--spec", str(spec_file),
                   "--stale-timeout-s", "0.5")

    def at(positions: np.ndarray) -> JointState:
        msg = joint_state()
        msg.position = positions.tolist()
        return msg

    def held(msg: JointState) -> np.ndarray:  # the action joints' positions, as observed
        names = list(msg.name)
        return np.array([msg.position[names.index(j)] for j in spec["action"]["names"]],
                        np.float32).astype(np.float64)

    def reach(state: str, what: str) -> np.ndarray:
        probe.spin_until(lambda: status_msgs and last_status(status_msgs)["state"] == state, 30,
                         what, policy)
        commands.clear()
        probe.spin_for(0.15)
        assert len(commands) >= 5
        return np.array([c.data for c in commands])

    feed["msg"] = at(np.linspace(-0.4, 0.4, 9))
    running = reach("running", "policy actions")
    assert not np.allclose(running, held(feed["msg"]))  # the policy's, not a hold

    at_stop = feed["msg"]
    estop.publish(Bool(data=True))
    reach("estop", "the e-stop")
    feed["msg"] = at(np.linspace(0.3, -0.3, 9))  # the joints move on: the stop holds
    probe.spin_for(0.3)
    assert (np.array([c.data for c in commands[-5:]]) == held(at_stop)).all()
    assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=True)).success
    reach("running", "policy actions after the e-stop")

    at_disable = feed["msg"]
    assert probe.call(SetBool, "/policy/enable", SetBool.Request(data=False)).success
    assert (reach("disabled", "disabled") == held(at_disable)).all()
    assert last_status(status_msgs)["command_interface"] == "position"
    assert policy.stop() == 0
