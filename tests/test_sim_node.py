"""The sim node: its runtime logic with real MuJoCo, and the node itself over real DDS."""
from __future__ import annotations

import math
import signal
import time

import numpy as np
import pytest

from robot_stack.errors import ConfigError
from robot_stack.sim_runtime import CommandGate, Pacer, SimRuntime, tick_period
from sim import make_task

rclpy = pytest.importorskip("rclpy")
from rosgraph_msgs.msg import Clock  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64, Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from rosutil import last_status, ros  # noqa: E402,F401 (ros: fixture)


# ----- runtime logic (no ROS) -----

def test_command_gate_clips_rejects_and_holds():
    gate = CommandGate([-1.0, -1.0], [1.0, 1.0])
    assert gate.submit([0.5, -0.5], now=0.0) is None
    assert gate.submit([2.0, -0.5], now=0.1) is None
    assert gate.command.tolist() == [1.0, -0.5] and gate.clipped == 1
    assert "3 values" in gate.submit([0.0, 0.0, 0.0], now=0.2)
    assert "NaN" in gate.submit([math.nan, 0.0], now=0.3)
    assert "NaN" in gate.submit([0.0, math.inf], now=0.3)
    assert gate.rejected == 3 and gate.accepted == 2
    assert gate.command.tolist() == [1.0, -0.5]  # rejected commands leave the held one
    assert gate.age(0.6) == pytest.approx(0.5)


def test_runtime_episode_ticks_truncation_and_idle_without_auto_reset():
    task = make_task("cheetah-run")
    runtime = SimRuntime(task, seed=3, auto_reset=False)
    first = runtime.tick()
    assert first.events == ["reset"] and first.reward is None
    runtime.submit_command([0.3] * task.act_dim)
    for _ in range(task.max_steps - 1):
        tick = runtime.tick()
        assert tick.events == [] and tick.reward is not None
    last = runtime.tick()
    assert last.events == ["truncated"]
    assert last.sim_time == pytest.approx((task.max_steps + 1) * task.control_dt)
    assert runtime.tick() is None and runtime.status()["episode_over"]
    runtime.reset_requested = True
    again = runtime.tick()
    assert again.events == ["reset"] and runtime.episodes == 2
    assert runtime.gate.command.tolist() == [0.0] * task.act_dim  # reset drops the old command


def test_runtime_seeds_episodes_reproducibly():
    a, b = SimRuntime(make_task("cheetah-run"), seed=5), SimRuntime(make_task("cheetah-run"), seed=5)
    first_a, first_b = a.tick(), b.tick()
    np.testing.assert_array_equal(first_a.qpos, first_b.qpos)
    a.reset_requested = True
    second_a = a.tick()  # the next episode starts from seed + 1: a different state
    assert not np.array_equal(first_a.qpos, second_a.qpos)


def test_runtime_truncates_at_max_episode_steps():
    runtime = SimRuntime(make_task("cheetah-run"), max_episode_steps=5)
    events = [runtime.tick().events for _ in range(8)]
    assert events == [["reset"], [], [], [], [], ["truncated"], ["reset"], []]
    with pytest.raises(ConfigError, match="max_episode_steps"):
        SimRuntime(make_task("cheetah-run"), max_episode_steps=-1)


def test_runtime_lockstep_applies_the_first_answer_to_each_state():
    task, reference = make_task("cheetah-run"), make_task("cheetah-run")
    runtime = SimRuntime(task, seed=2, lockstep=True, max_episode_steps=3)
    first = runtime.tick()
    state = reference.reset(seed=2)[0]
    assert runtime.awaiting_answer  # published: waiting for the command that answers it
    runtime.submit_command([0.5] * 6)
    runtime.submit_command([-0.5] * 6)  # a second command before the step is only held
    assert not runtime.awaiting_answer
    tick = runtime.tick()
    assert tick.applied.tolist() == [0.5] * 6  # reported: the command the step applied
    state, _ = reference.step_from(state, np.full(6, 0.5))
    # (step_from starts from root x = 0: equal up to rounding)
    np.testing.assert_allclose(task.get_state(), state, rtol=0, atol=1e-9)
    assert runtime.awaiting_answer and tick.sim_time > first.sim_time
    runtime.answer_timed_out()  # no answer in time: the held command is applied
    assert runtime.tick().applied.tolist() == [-0.5] * 6
    state, _ = reference.step_from(state, np.full(6, -0.5))
    np.testing.assert_allclose(task.get_state(), state, rtol=0, atol=1e-9)
    assert runtime.lockstep_timeouts == 1 and runtime.status()["lockstep_timeouts"] == 1
    runtime.submit_command([3.0] * 6)
    last = runtime.tick()
    assert last.events == ["truncated"] and last.applied.tolist() == [1.0] * 6  # clipped
    assert runtime.awaiting_answer  # the last state is answered too, before the reset
    runtime.submit_command([0.2] * 6)
    reset = runtime.tick()
    assert reset.events == ["reset"] and runtime.gate.command.tolist() == [0.0] * 6
    assert reset.applied is None  # the answer to the final state is never applied


def test_runtime_without_lockstep_never_waits():
    runtime = SimRuntime(make_task("cheetah-run"))
    runtime.tick()
    assert not runtime.awaiting_answer


class FakeClock:
    """Stands in for time.monotonic/time.sleep so the schedule can be checked exactly."""

    def __init__(self):
        self.now = 100.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_pacer_schedules_without_drift_and_reanchors_after_long_stalls():
    clock = FakeClock()
    pacer = Pacer(0.01, max_lag=5, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        clock.now += 0.004  # work of one tick
        pacer.wait()
    assert clock.now == pytest.approx(100.03)  # due times are start + k * period, no drift
    clock.now += 0.5  # a long stall: re-anchor instead of bursting 50 ticks
    pacer.wait()
    assert pacer.overruns == 1
    pacer.wait()
    assert clock.now == pytest.approx(100.54)


def test_tick_period_rejects_negative_factor():
    assert tick_period(0.01, 2.0) == pytest.approx(0.005)
    assert tick_period(0.01, 0.0) == 0.0
    with pytest.raises(ConfigError, match="realtime_factor"):
        tick_period(0.01, -1.0)


# ----- the node over DDS -----

def wait_status(probe, status, process, condition, what, timeout=20.0):
    probe.spin_until(lambda: status and condition(last_status(status)), timeout, what, process)
    return last_status(status)


def test_sim_publishes_joint_states_and_reward_in_real_time(ros):
    probe, start = ros
    states = probe.collect(JointState, "joint_states")
    rewards = probe.collect(Float64, "reward")
    status = probe.collect(String, "/sim/status", latched=True)
    sim = start("sim", "serve", "--task", "cheetah-run")
    probe.spin_until(lambda: len(states) >= 100 and rewards, 30, "100 joint states", sim)

    task = make_task("cheetah-run")
    for msg in states:
        assert list(msg.name) == task.joint_names
        assert len(msg.position) == len(msg.velocity) == len(task.joint_names)
    assert all(math.isfinite(r.data) for r in rewards)
    stamps = [s.header.stamp.sec + 1e-9 * s.header.stamp.nanosec for s in states]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))

    # Pacing: the sim never runs ahead of the wall clock (load can only slow it down).
    first, t0 = wait_status(probe, status, sim, lambda s: True, "status"), time.monotonic()
    probe.spin_for(1.5)
    later, t1 = last_status(status), time.monotonic()
    assert later["steps"] > first["steps"]
    assert later["sim_time"] - first["sim_time"] <= 1.1 * (t1 - t0) + 0.3
    assert sim.stop(signal.SIGTERM) == 0, sim.output()
    assert "Traceback" not in sim.output()


def test_sim_clips_rejects_and_holds_commands(ros):
    probe, start = ros
    status = probe.collect(String, "/sim/status", latched=True)
    commands = probe.node.create_publisher(Float64MultiArray, "commands", 10)
    sim = start("sim", "serve", "--task", "cheetah-run")
    probe.spin_until(lambda: commands.get_subscription_count() > 0, 30, "the sim's subscription", sim)
    wait_status(probe, status, sim, lambda s: s["steps"] > 0, "the sim to step")

    commands.publish(Float64MultiArray(data=[2.0, -3.0, 0.5, 0.0, 0.0, 0.0]))
    s = wait_status(probe, status, sim, lambda s: s["commands_accepted"] == 1, "the command")
    assert s["clipped"] == 1 and s["command"] == [1.0, -1.0, 0.5, 0.0, 0.0, 0.0]

    commands.publish(Float64MultiArray(data=[0.1, 0.1, 0.1]))
    commands.publish(Float64MultiArray(data=[math.nan] + [0.0] * 5))
    s = wait_status(probe, status, sim, lambda s: s["rejected"] == 2, "two rejections")
    assert s["commands_accepted"] == 1 and s["clipped"] == 1

    # No more commands: after command_timeout (0.5 s sim time) the status reports holding, and
    # the held command is the last valid one.
    s = wait_status(probe, status, sim, lambda s: s["holding"], "holding")
    assert s["command"] == [1.0, -1.0, 0.5, 0.0, 0.0, 0.0] and s["command_age"] > 0.5
    steps = s["steps"]
    s = wait_status(probe, status, sim, lambda s: s["steps"] > steps + 20, "more steps")
    assert s["holding"] and s["command"] == [1.0, -1.0, 0.5, 0.0, 0.0, 0.0]

    assert sim.stop() == 0, sim.output()
    log = sim.output()
    assert log.count("rejected command") == 1, log  # the warning is throttled
    assert "Traceback" not in log


def test_sim_reset_service_starts_a_new_episode(ros):
    probe, start = ros
    status = probe.collect(String, "/sim/status", latched=True)
    events = probe.collect(String, "episode_events")
    commands = probe.node.create_publisher(Float64MultiArray, "commands", 10)
    sim = start("sim", "serve", "--task", "cheetah-run")
    probe.spin_until(lambda: commands.get_subscription_count() > 0, 30, "the sim's subscription", sim)
    commands.publish(Float64MultiArray(data=[0.5] * 6))
    wait_status(probe, status, sim, lambda s: s["episode_step"] > 50 and s["commands_accepted"],
                "50 steps")

    response = probe.call(Trigger, "/sim/reset", Trigger.Request())
    assert response.success, response.message
    probe.spin_until(lambda: any(e.data == "reset" for e in events), 10, "the reset event", sim)
    s = wait_status(probe, status, sim, lambda s: s["episodes"] == 2, "the second episode")
    assert s["episode_step"] < 50 and s["command"] == [0.0] * 6
    assert sim.stop() == 0, sim.output()


def test_sim_faster_than_real_time_publishes_clock_and_auto_resets(ros):
    probe, start = ros
    events = probe.collect(String, "episode_events")
    clock = probe.collect(Clock, "/clock")
    states = probe.collect(JointState, "joint_states")
    sim = start("sim", "serve", "--task", "cheetah-run", "--realtime-factor", "0")
    probe.spin_until(lambda: "reset" in [e.data for e in events][1:], 60,
                     "a truncated episode and the next reset", sim)
    names = [e.data for e in events]
    assert names[names.index("truncated") + 1] == "reset"
    assert clock
    # Stamps are sim time: whole control periods, increasing.
    stamps = [s.header.stamp.sec + 1e-9 * s.header.stamp.nanosec for s in states]
    assert all(b > a for a, b in zip(stamps, stamps[1:]))
    assert all(abs(t / 0.01 - round(t / 0.01)) < 1e-6 for t in stamps)
    assert sim.stop() == 0, sim.output()


def test_sim_without_auto_reset_waits_for_the_reset_service(ros):
    probe, start = ros
    status = probe.collect(String, "/sim/status", latched=True)
    sim = start("sim", "serve", "--task", "cheetah-run", "--realtime-factor", "0",
                "--no-auto-reset")
    s = wait_status(probe, status, sim, lambda s: s["episode_over"], "the end of the episode", 60)
    assert s["steps"] == 1000 and s["episodes"] == 1
    probe.spin_for(0.3)
    assert last_status(status)["steps"] == 1000  # idle: no steps after the end
    assert probe.call(Trigger, "/sim/reset", Trigger.Request()).success
    s = wait_status(probe, status, sim, lambda s: s["episodes"] == 2, "the second episode")
    assert sim.stop() == 0, sim.output()


def test_lockstep_sim_waits_for_commands_and_resets_while_taking_them(ros):
    probe, start = ros
    status = probe.collect(String, "/sim/status", latched=True)
    states = probe.collect(JointState, "joint_states")
    applied = probe.collect(JointState, "applied_commands")
    commands = probe.node.create_publisher(Float64MultiArray, "commands", 10)
    # No command within 60 s would time out: until the probe answers, the sim does not step.
    sim = start("sim", "serve", "--lockstep", "--lockstep-timeout", "60", "--publish-clock")
    probe.spin_until(lambda: commands.get_subscription_count() > 0 and status, 30,
                     "the sim's subscription and status", sim)
    probe.spin_for(0.5)
    assert last_status(status)["steps"] == 0
    for answered in range(1, 4):  # each command answers the last state: one step each
        commands.publish(Float64MultiArray(data=[0.5 + answered] * 6))  # clipped to 1
        wait_status(probe, status, sim, lambda s: s["steps"] == answered, f"step {answered}")
    probe.spin_for(0.5)
    assert last_status(status)["steps"] == 3
    # each step reports the command it applied, stamped like the state it was applied from
    # (sim time: the reset state at 0.01 s, then the state each step produced)
    def seconds(messages):
        return [round(m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec, 6) for m in messages]
    assert seconds(applied) == [0.01, 0.02, 0.03] and seconds(states)[-3:] == [0.02, 0.03, 0.04]
    for report in applied:
        assert list(report.name) == make_task("cheetah-run").actuator_names
        assert list(report.effort) == [1.0] * 6 and not report.position and not report.velocity
    # ~/reset waits for the tick loop, which waits for the answer to its last state: the answer
    # must still be taken meanwhile (a reset blocking the executor would wait 60 s for it).
    client = probe.node.create_client(Trigger, "/sim/reset")
    probe.spin_until(client.service_is_ready, 20, "the reset service", sim)
    reply = client.call_async(Trigger.Request())
    probe.spin_for(0.3)
    commands.publish(Float64MultiArray(data=[0.5] * 6))
    probe.spin_until(reply.done, 20, "the reset's reply", sim)
    assert reply.result().success, reply.result().message
    s = wait_status(probe, status, sim, lambda s: s["episodes"] == 2, "the second episode")
    assert s["lockstep_timeouts"] == 0 and s["steps"] == 3
    # the reset ended the episode at its last state: reported with nothing applied
    probe.spin_until(lambda: len(applied) == 4, 10, "the end report", sim)
    assert seconds(applied)[3] == 0.04 and not applied[3].effort
    stamps = [m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in states]
    assert np.allclose(np.diff(stamps), 0.01)  # one state per tick, none skipped
    assert sim.stop() == 0, sim.output()


def test_sim_and_teleop_exit_cleanly_on_a_double_sigint(ros):
    # Ctrl-C under ros2 launch: SIGINT from the terminal, then another from launch.
    probe, start = ros
    commands = probe.collect(Float64MultiArray, "commands")
    nodes = [start("sim", "serve", "--lockstep"), start("teleop", "--source", "scripted")]
    probe.spin_until(lambda: len(commands) > 20, 60, "the teleop driving the sim", nodes[0])
    for node in nodes:
        node.proc.send_signal(signal.SIGINT)
    time.sleep(0.02)  # the second arrives while the first shuts the node down
    for node in nodes:
        assert node.stop(signal.SIGINT) == 0, node.output()
        assert "Traceback" not in node.output() and "exception" not in node.output()


def test_sim_rejects_an_unknown_task(ros):
    _, start = ros
    sim = start("sim", "serve", "--task", "cheetah-fly")
    assert sim.proc.wait(60) == 2
    log = sim.output()
    assert "unknown task 'cheetah-fly'" in log and "Traceback" not in log
