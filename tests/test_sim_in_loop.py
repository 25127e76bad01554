"""Sim node + scripted teleop + recorder over real DDS; the recording replays in MuJoCo.

The sim runs in lockstep (it steps only once a command answered the state it published) and
reports each command it applied on applied_commands, stamped like the state it was applied
from; the recorder pairs each report with the state of the identical stamp, so every recorded
(state, action) pair is one the sim applied, whatever order DDS delivers the topics in. Short
episodes (max_episode_steps) end with "truncated" and the recorder records each one from the
sim's reset. Each whole episode is replayed open-loop from its first recorded state with the
ground-truth step: the replayed states and rewards match the recorded ones. The only difference
is float32 rounding of the recorded actions (the sim applied float64 commands):
measured max error 2e-7..4e-6 over 60-step episodes, hence TOLERANCE 1e-4. A state/action pairing off
by one step, or a held command, gives errors of 1e-2..1.
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

from rosutil import (REPO, NodeProcess, Probe, last_status, release_domain_id,  # noqa: E402
                     unique_domain_id)

EPISODES = 3
EPISODE_STEPS = 60
SEED = 7
TOLERANCE = 1e-4


def test_recorded_lockstep_sim_episodes_replay_in_mujoco(tmp_path):
    # float64 observations: the replay compares against the exact states the sim published
    spec = yaml.safe_load((REPO / "config/robot_cheetah_sim.yaml").read_text())
    spec["observation_dtype"] = "float64"
    spec_path, out = tmp_path / "spec.yaml", tmp_path / "sim.zarr"
    spec_path.write_text(yaml.safe_dump(spec))
    domain = unique_domain_id()
    probe = Probe(domain)
    recorder_status = probe.collect(String, "/recorder/status", latched=True)
    sim_status = probe.collect(String, "/sim/status", latched=True)
    nodes = [NodeProcess(["sim", "serve", "--lockstep", "--lockstep-timeout", "3",
                          "--max-episode-steps", str(EPISODE_STEPS), "--seed", str(SEED),
                          "--publish-clock"], domain),
             NodeProcess(["teleop", "--source", "scripted", "--spec", str(spec_path)], domain),
             # the recorder resets the sim once it receives everything; the episode open at the
             # end is discarded, so that all recorded episodes are whole
             NodeProcess(["record", "--spec", str(spec_path), "--out", str(out),
                          "--auto-episodes", "--source", "scripted", "--on-shutdown", "discard",
                          "--ros-args", "-p", "reset_service:=/sim/reset"], domain)]
    sim, recorder = nodes[0], nodes[2]
    try:
        probe.spin_until(lambda: recorder_status and last_status(
            recorder_status)["episodes_committed"] >= EPISODES, 60, f"{EPISODES} episodes",
            recorder)
        assert recorder.stop(signal.SIGINT) == 0, recorder.output()
        for node in nodes:
            assert node.stop(signal.SIGINT) == 0, node.output()
            assert "Traceback" not in node.output(), node.output()
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)
        probe.close()
        release_domain_id(domain)

    store = EpisodeStore.open(out)
    assert store.n_episodes >= EPISODES, recorder.output()
    assert set(store.episode_meta["source"]) == {"scripted"}
    task = make_task("cheetah-run")
    sim_counters = last_status(sim_status) if sim_status else "no sim status"
    # The sim seeds its episode k with SEED + k. Each recorded episode must start exactly at one
    # of those reset states, in order (under load the recorder may begin with a later episode
    # or skip one whose start it refused, e.g. a stream went stale; it never records a partial).
    reset_states = [task.reset(seed=s)[0] for s in range(SEED, SEED + 40)]
    counters = last_status(recorder_status)
    assert counters["pairing"] == "exact stamp", counters
    errors, previous_start = [], -1
    for i in range(store.n_episodes):
        episode = store.episode(i)
        observations, actions = episode["observation"], episode["action"].astype(np.float64)
        # each episode starts at a sim reset, later than the previous episode's, and runs to truncation
        starts = [k for k, r in enumerate(reset_states) if np.array_equal(observations[0], r)]
        assert starts and starts[0] > previous_start, f"episode {i} does not start at a later sim reset"
        previous_start = starts[0]
        assert len(actions) == EPISODE_STEPS and not episode["terminal"].any(), (
            f"episode {i}: {counters}")
        # each action is the sim's report of what it applied from the state of the same stamp
        np.testing.assert_array_equal(episode["stamp/applied_commands"],
                                      episode["stamp/joint_states"])
        # lockstep: the sample after a state is the state one tick later (sim-time stamps)
        np.testing.assert_allclose(np.diff(episode["stamp/joint_states"]), task.control_dt,
                                   err_msg=f"episode {i}, sim: {sim_counters}")
        state = observations[0]
        for t in range(EPISODE_STEPS):  # the whole episode, open loop
            state, reward = task.step_from(state, actions[t])
            if t + 1 < EPISODE_STEPS:
                errors.append(np.abs(state - observations[t + 1]).max())
                np.testing.assert_allclose(state, observations[t + 1], rtol=0, atol=TOLERANCE,
                                           err_msg=f"episode {i} step {t}")
            np.testing.assert_allclose(reward, episode["reward"][t], rtol=0, atol=TOLERANCE,
                                       err_msg=f"episode {i} reward {t}")
    print(f"replayed {store.n_episodes} episodes of {EPISODE_STEPS} steps: max state error "
          f"{max(errors):.2e}; recorder {counters}")
