"""Sim node + scripted teleop + recorder over real DDS; the recording replays in MuJoCo.

Each recorded episode starts at a sim reset (auto episodes). Replaying its recorded actions
from its first recorded state with the ground-truth step reproduces the recorded states, and
the recorded rewards, to float32 rounding of the actions: measured max error ~1e-6 over ~50
steps (rollout), so the tolerance below is 1e-4. A state/action pairing off by one step, or a
reward shifted by one, gives errors of 1e-2..1. The sim holds its last command when the
teleop's answer comes late; those stretches are recognised from the recorded sim-time stamps
and left out (see in_step_transitions).
"""
from __future__ import annotations

import signal

import numpy as np
import pytest
import yaml

from robot_stack.data import EpisodeStore
from sim import make_task

rclpy = pytest.importorskip("rclpy")
from std_msgs.msg import String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from rosutil import REPO, NodeProcess, Probe, last_status, unique_domain_id  # noqa: E402

EPISODES = 3
STEPS_PER_EPISODE = 30  # reset the sim after about this many recorded steps
TOLERANCE = 1e-4


def test_recorded_sim_episodes_replay_in_mujoco(tmp_path):
    # float64 observations: the replay compares against the exact recorded states
    spec = yaml.safe_load((REPO / "config/robot_cheetah_sim.yaml").read_text())
    spec["observation_dtype"] = "float64"
    spec_path, out = tmp_path / "spec.yaml", tmp_path / "sim.zarr"
    spec_path.write_text(yaml.safe_dump(spec))
    domain = unique_domain_id()
    probe = Probe(domain)
    status = probe.collect(String, "/recorder/status", latched=True)
    # A fifth of real time gives the teleop 50 ms per tick to answer, on a loaded machine too.
    nodes = [NodeProcess(["sim", "serve", "--realtime-factor", "0.2", "--seed", "7"], domain),
             NodeProcess(["teleop", "--source", "scripted", "--spec", str(spec_path)], domain),
             NodeProcess(["record", "--spec", str(spec_path), "--out", str(out),
                          "--auto-episodes", "--source", "scripted"], domain)]
    recorder = nodes[2]
    try:
        probe.spin_until(lambda: status and last_status(status)["received"]["commands"] > 0,
                         30, "commands reaching the recorder", recorder)
        for episode in range(EPISODES):
            assert probe.call(Trigger, "/sim/reset", Trigger.Request()).success
            probe.spin_until(lambda: last_status(status)["episode"] == episode and last_status(
                status)["episode_steps"] >= STEPS_PER_EPISODE, 30, f"episode {episode}", recorder)
        # The last reset's episode is still open: SIGINT commits it (on_shutdown: commit).
        assert recorder.stop(signal.SIGINT) == 0, recorder.output()
    finally:
        for node in nodes:
            node.stop(signal.SIGINT)
        probe.close()

    store = EpisodeStore.open(out)
    assert store.n_episodes >= EPISODES, recorder.output()
    assert set(store.episode_meta["source"]) == {"scripted"}
    task = make_task("cheetah-run")
    replayed = 0
    for i in range(store.n_episodes):
        episode = store.episode(i)
        observations, actions = episode["observation"], episode["action"].astype(np.float64)
        assert len(actions) >= STEPS_PER_EPISODE and not episode["terminal"].any()
        trusted = in_step_transitions(episode["stamp/joint_states"], task.control_dt)
        assert trusted.sum() >= STEPS_PER_EPISODE // 2, f"episode {i}: {trusted}"
        clean_prefix = len(trusted) if trusted.all() else int(np.argmin(trusted))
        state = observations[0]
        for t in range(clean_prefix):  # replay from the first recorded state
            state, _ = task.step_from(state, actions[t])
            np.testing.assert_allclose(state, observations[t + 1], atol=TOLERANCE,
                                       err_msg=f"episode {i} step {t}")
        replayed += clean_prefix
        for t in np.flatnonzero(trusted):  # every trusted transition, and its reward
            next_state, reward = task.step_from(observations[t], actions[t])
            np.testing.assert_allclose(next_state, observations[t + 1], atol=TOLERANCE,
                                       err_msg=f"episode {i} step {t}")
            np.testing.assert_allclose(reward, episode["reward"][t], atol=TOLERANCE)
    assert replayed >= STEPS_PER_EPISODE


def in_step_transitions(state_stamps: np.ndarray, control_dt: float) -> np.ndarray:
    """Transitions t -> t+1 during which sim and teleop were in step, from the sim-time stamps.

    When the teleop falls behind (CPU starvation; the sim's ~/reset service also holds its
    executor, so commands queue during a reset), the sim applies an older command and the
    recorded states repeat or skip a tick (the recorder counts these as state gaps). The
    transitions next to such a gap can be off too while the loop catches up, so a transition is
    trusted only if it and its neighbours advanced by exactly one tick.
    """
    one_tick = np.isclose(np.diff(state_stamps), control_dt)
    padded = np.concatenate([[True], one_tick, [True]])
    return one_tick & padded[:-2] & padded[2:]
