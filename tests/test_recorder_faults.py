"""The recorder tells the truth under faults: a full disk, a slow writer, bad settings, malformed
end reports, gaps in the samples (logic with a real store; a stalled recorder over real DDS)."""
import copy
import errno
import math
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import zarr

from robot_stack.data import EpisodeStore, check
from robot_stack.data.continuity import episode_gaps
from robot_stack.errors import ConfigError
from robot_stack.recording import Recorder, StoreWriterThread, open_store, step_keys
from robot_stack.spec import MalformedMessage, spec_from_dict
from faults import tmpfs
from test_recorder_logic import EXACT, SPEC, ExactFeed, applied, feed_all, joint_state, stamp_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_REWARD = {k: v for k, v in SPEC.items() if k != "reward"}


class Notes(list):
    """The recorder's notify callback: (message, error) per episode outcome."""

    def __call__(self, message, error=False):
        self.append((message, error))


def recorder_on(store, raw=SPEC, **kwargs):
    spec = spec_from_dict(copy.deepcopy(raw))
    notes = Notes()
    return Recorder(spec, StoreWriterThread(store), notify=notes, **kwargs), notes


def record_timer_episode(rec, t0, steps, start=True):
    """`steps` contiguous timer ticks (rate 10 Hz) from t0, in a new episode unless start is
    False; returns the time after them."""
    feed_all(rec, t0, k=t0)
    assert not start or rec.start_episode(t0)[0]
    for i in range(steps):
        feed_all(rec, t0 + 0.05 + 0.1 * i, k=i)
        rec.on_tick(t0 + 0.05 + 0.1 * i)
    return t0 + 0.1 * steps


# ----- a full disk -----
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (a real ENOSPC when full); skipped where mounting is not permitted."""
    with tmpfs(tmp_path / "disk", "2m") as mount:
        yield mount


def fill(disk):
    """Writes a file until the disk is full; returns its path."""
    path = disk / "filler"
    with open(path, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return path


def wait_until(condition, what):
    """Polls a condition on real state (files, the writer) for up to 20 s."""
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def committed_on_disk(path):
    store = EpisodeStore.open(path)
    try:
        return store.n_episodes
    finally:
        store.close()


def test_a_full_disk_fails_the_episode_loudly_keeps_the_committed_ones_and_recovers(small_disk):
    spec, path = spec_from_dict(copy.deepcopy(SPEC)), small_disk / "d.zarr"
    rec, notes = recorder_on(open_store(path, spec))
    t = record_timer_episode(rec, 1.0, 5)
    rec.stop_episode(True, t)
    wait_until(lambda: committed_on_disk(path) == 1, "episode 0 on disk")
    first = EpisodeStore.open(path).episode(0)

    filler = fill(small_disk)
    t = record_timer_episode(rec, t + 1.0, 5)
    rec.stop_episode(True, t)
    wait_until(lambda: rec.writer.error, "the write to fail")
    assert "No space left on device" in rec.writer.error
    filler.unlink()  # space returns: the recorder recovers by itself
    t = record_timer_episode(rec, t + 1.0, 4)
    rec.stop_episode(False, t)
    rec.shutdown()
    store = EpisodeStore.open(path)
    assert store.n_episodes == 2 and store.episode_meta["length"].tolist() == [5, 4]
    for key, values in store.episode(0).items():  # committed before the failure: intact
        np.testing.assert_array_equal(values, first[key], err_msg=key)
    store.close()
    assert check(path).ok
    # Reported as it happened: the failed episode at error level, never as committed.
    assert [(m.split(":")[0], error) for m, error in notes] == [
        ("committed episode 0 (5 steps)", False), ("episode of 5 steps NOT committed", True),
        ("committed episode 1 (4 steps)", False)]
    assert "No space left on device" in notes[1][0]
    status = rec.status(t)
    assert (status["episodes_committed"], status["episodes_failed"], status["episode"]) == (
        2, 1, 2)
    assert status["writer_error"] == ""


def test_the_stop_service_answers_that_a_commit_failed(small_disk):
    spec = spec_from_dict(copy.deepcopy(SPEC))
    rec, notes = recorder_on(open_store(small_disk / "d.zarr", spec))
    fill(small_disk)
    t = record_timer_episode(rec, 1.0, 3)
    ok, message = rec.stop_episode(None, t, wait_s=10.0)
    assert not ok and message.startswith("episode of 3 steps NOT committed: commit: ")
    assert "No space left on device" in message and notes == [(message, True)]
    assert "No space left on device" in rec.status(t)["writer_error"]
    rec.shutdown()


class SlowDisk:
    """A real EpisodeStore whose commits wait until `release` is set (a stalled disk)."""

    def __init__(self, store):
        self.store, self.release = store, threading.Event()

    def begin_episode(self, **kwargs):
        episode = self.store.begin_episode(**kwargs)
        commit = episode.commit

        def slow_commit(**commit_kwargs):
            self.release.wait()
            return commit(**commit_kwargs)
        episode.commit = slow_commit
        return episode

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_commit_is_reported_only_once_the_writer_confirmed_it(tmp_path):
    spec = spec_from_dict(copy.deepcopy(SPEC))
    disk = SlowDisk(open_store(tmp_path / "d.zarr", spec))
    rec, notes = recorder_on(disk)
    t = record_timer_episode(rec, 1.0, 3)
    ok, message = rec.stop_episode(True, t, wait_s=0.3)
    assert ok and message.startswith("commit pending: 1 episode(s) of 3 steps not confirmed")
    status = rec.status(t)
    assert (status["episodes_committed"], status["commits_pending"], status["episode"]) == (
        0, 1, 0)
    assert not any("committed episode" in m for m, _ in notes)
    disk.release.set()
    assert rec.confirm_commits(10.0) == ["committed episode 0 (3 steps)"]
    assert notes[-1] == ("committed episode 0 (3 steps)", False)
    assert rec.status(t)["episodes_committed"] == 1 and rec.status(t)["episode"] == 1
    rec.shutdown()


# ----- settings -----
@pytest.mark.parametrize("setting, value", [
    ("source", "teleoperated"), ("on_shutdown", "keep"), ("sample_on", "odometry"),
    ("reward_wait_s", -1.0), ("pair_timeout_s", math.nan), ("commit_wait_s", 0),
    ("auto_episodes", "yes")])
def test_every_recorder_setting_is_checked_at_start(tmp_path, setting, value):
    spec = spec_from_dict(copy.deepcopy(SPEC))
    store = open_store(tmp_path / "d.zarr", spec)
    with pytest.raises(ConfigError, match=f"recorder setting {setting} must be"):
        Recorder(spec, StoreWriterThread(store), **{setting: value})
    for setting, value in (("max_queued_steps", 0), ("flush_period_s", math.inf)):
        with pytest.raises(ConfigError, match=f"recorder setting {setting} must be"):
            StoreWriterThread(store, **{setting: value})


@pytest.mark.parametrize("args, problem", [
    (["--source", "teleoperated"], "source must be one of teleop, scripted, sim"),
    (["--ros-args", "-p", "max_queued_steps:=-3"], "max_queued_steps must be a whole number"),
    (["--ros-args", "-p", "status_rate:=abc"], "status_rate"),
])
def test_the_recorder_node_refuses_a_bad_setting_in_one_line(tmp_path, args, problem):
    pytest.importorskip("rclpy")
    from rosutil import release_domain_id, unique_domain_id

    out, domain = tmp_path / "d.zarr", unique_domain_id()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "robot_stack.cli", "record", "--spec",
             "config/robot_cheetah_sim.yaml", "--out", str(out), *args], cwd=REPO,
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, ROS_DOMAIN_ID=str(domain)))
    finally:
        release_domain_id(domain)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("recorder: error: ") and problem in lines[0]
    assert not out.exists()  # refused before the dataset was created


# ----- malformed end reports -----
def test_only_the_documented_end_report_ends_an_episode(tmp_path):
    spec = spec_from_dict(copy.deepcopy(EXACT))
    assert spec.parse("applied_commands", applied([], names=["b", "a"])) == {}
    for bad, problem in ((applied([], names=["a", "c"]), "joint names ['a', 'c']"),
                         (applied([], names=[]), "joint names []"),
                         ({**applied([], names=["a", "b"]), "position": [0.0, 0.0]},
                          "position or velocity")):
        with pytest.raises(MalformedMessage, match=r"end report"):
            spec.parse("applied_commands", bad)
        with pytest.raises(MalformedMessage, match=problem.replace("[", r"\[")):
            spec.parse("applied_commands", bad)

    rec, _ = recorder_on(open_store(tmp_path / "d.zarr", spec), EXACT, auto_episodes=True)
    feed = ExactFeed(rec)
    feed.state(0)
    feed.command(0)  # streams fresh; paired while idle: not recorded
    assert rec.on_event("reset", feed.now)[0]
    for k in range(1, 6):
        feed.state(k)
        feed.command(k)
        feed.reward(k)
        if k == 3:  # a report with wrong joint names and no effort, at the stamp of state 3
            assert feed._send("applied_commands", applied([], names=["x", "y"]), stamp_of(3))
    rec.on_event("truncated", feed.now)
    feed.state(6)
    feed.end(6)
    rec.shutdown()
    status = rec.status(feed.now)
    assert status["malformed"]["applied_commands"] == 1
    assert "end report" in status["last_malformed"]["applied_commands"]
    store = EpisodeStore.open(tmp_path / "d.zarr")
    assert store.n_episodes == 1
    np.testing.assert_array_equal(store.episode(0)["observation"][:, 0], [1, 2, 3, 4, 5])


# ----- gaps -----
@pytest.mark.parametrize("min_part_steps, lengths", [(1, [3, 4]), (4, [4])])
def test_a_timer_recording_is_split_at_dropped_ticks(tmp_path, min_part_steps, lengths):
    spec = spec_from_dict(copy.deepcopy(NO_REWARD))
    rec, notes = recorder_on(open_store(tmp_path / "d.zarr", spec), NO_REWARD,
                             min_part_steps=min_part_steps)
    feed_all(rec, 1.0)
    rec.start_episode(1.0)
    for t in (1.05, 1.15, 1.25, 1.55, 1.65, 1.75, 1.85):  # ticks 1.35 and 1.45 never ran
        feed_all(rec, t)
        rec.on_tick(t)
    rec.stop_episode(None, 1.9)
    rec.shutdown()
    store = EpisodeStore.open(tmp_path / "d.zarr")
    for i in range(store.n_episodes):
        assert len(episode_gaps(store.episode(i)["timestamp"], 0.15)) == 0
    assert store.episode_meta["length"].tolist() == lengths
    status = rec.status(1.9)
    assert (status["gaps"], status["gap_samples_missing"], status["episodes_split_at_gaps"]) == (
        1, 2, 1)
    if min_part_steps == 1:
        assert [m for m, _ in notes] == [
            "committed episode 0 (3 steps, the part before a gap (timestamp steps +0.300 s))",
            "committed episode 1 (4 steps)"]
    else:  # the 3 steps before the gap are too few
        assert (status["short_parts_discarded"], status["samples_discarded_at_gaps"]) == (1, 3)


def wait_for_writer(rec):
    """Until the writer has taken every queued step."""
    deadline = time.monotonic() + 10
    while rec.writer.queued_steps and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_writer_queue_overflow_splits_the_episode_where_steps_were_lost(tmp_path):
    spec = spec_from_dict(copy.deepcopy(NO_REWARD))
    disk = SlowDisk(open_store(tmp_path / "d.zarr", spec))
    rec = Recorder(spec, StoreWriterThread(disk, max_queued_steps=4), notify=Notes(),
                   min_part_steps=1)
    t = record_timer_episode(rec, 1.0, 2)
    rec.stop_episode(None, t)  # its commit holds the writer up: the next steps queue up
    wait_for_writer(rec)
    t = record_timer_episode(rec, t + 1.0, 7)  # 4 queued (one held back), 2 lost
    disk.release.set()
    wait_for_writer(rec)
    t = record_timer_episode(rec, t, 4, start=False)  # ticks go on
    wait_for_writer(rec)
    rec.stop_episode(None, t)
    rec.shutdown()
    store = EpisodeStore.open(tmp_path / "d.zarr")
    for i in range(store.n_episodes):
        assert len(episode_gaps(store.episode(i)["timestamp"], 0.15)) == 0
    assert store.episode_meta["length"].tolist() == [2, 4, 5]
    status = rec.status(t)
    assert status["queue_dropped"] == 2 and status["gaps"] == 1, status
    assert status["gap_samples_missing"] == 2 and status["episodes_split_at_gaps"] == 1


def stitched_dataset(path, jump_s):
    """A recording of the exact-pairing spec with one episode of 8 steps whose sample clock
    jumps by jump_s after step 4 (as if stitched from two sim episodes)."""
    spec = spec_from_dict(copy.deepcopy(EXACT))
    store = open_store(path, spec)
    stamps = 10.0 + 0.1 * np.arange(8) + np.where(np.arange(8) >= 4, jump_s, 0.0)
    rows = {key: np.zeros((8, *k.shape), k.dtype) for key, k in step_keys(spec).items()}
    rows["timestamp"] = 100.0 + 0.1 * np.arange(8)
    for stream in ("joint_states", "applied_commands"):
        rows[f"stamp/{stream}"] = stamps
    store.append_episode(rows, source="sim")
    store.close()


def test_data_check_reports_stitched_episodes_from_their_stamps(tmp_path):
    stitched_dataset(tmp_path / "ok.zarr", 0.0)
    assert check(tmp_path / "ok.zarr").ok
    stitched_dataset(tmp_path / "stitched.zarr", 4.9)
    report = check(tmp_path / "stitched.zarr")
    assert not report.ok and not report.repairable
    assert report.problems == [
        "1 gap(s) in 1 episode(s): data/stamp/applied_commands steps outside (0, 0.5) s, so "
        "the samples around them are not one transition: episode 0 at step 4 (+5.000 s)"]

    root = zarr.open_group(tmp_path / "stitched.zarr", mode="r+")
    root.attrs["robot"] = {k: v for k, v in root.attrs["robot"].items() if k != "spec"}
    assert check(tmp_path / "stitched.zarr").problems == [
        "cannot check continuity: the dataset has data/stamp/* keys but its robot attribute holds no "
        "recording spec"]


# ----- a stalled recorder over real DDS -----
def test_a_stalled_recorder_commits_only_contiguous_episodes(tmp_path):
    pytest.importorskip("rclpy")
    from std_msgs.msg import String

    from rosutil import NodeProcess, Probe, last_status, release_domain_id, unique_domain_id

    spec_path, out = tmp_path / "spec.yaml", tmp_path / "sim.zarr"
    spec_path.write_text((open(os.path.join(REPO, "config/robot_cheetah_sim.yaml")).read()))
    domain = unique_domain_id()
    probe = Probe(domain)
    status = probe.collect(String, "/recorder/status", latched=True)
    # episodes of 2 s (real time): the stall begins inside one and outlasts it
    nodes = [NodeProcess(["sim", "serve", "--lockstep", "--max-episode-steps", "200",
                          "--publish-clock"], domain),
             NodeProcess(["teleop", "--source", "scripted", "--spec", str(spec_path)], domain),
             NodeProcess(["record", "--spec", str(spec_path), "--out", str(out),
                          "--auto-episodes", "--source", "scripted", "--on-shutdown", "discard",
                          "--ros-args", "-p", "reset_service:=/sim/reset"], domain)]
    recorder = nodes[2]
    try:
        probe.spin_until(lambda: status and last_status(status)["episodes_committed"] >= 1
                         and last_status(status)["state"] == "recording"
                         and last_status(status)["episode_steps"] < 100, 60,
                         "a committed episode and the first half of the next one", recorder)
        recorder.proc.send_signal(signal.SIGSTOP)  # the sim and teleop go on: DDS queues overflow
        time.sleep(3.0)
        recorder.proc.send_signal(signal.SIGCONT)
        committed = last_status(status)["episodes_committed"]
        # the part before the stall, then a whole episode
        probe.spin_until(lambda: last_status(status)["episodes_committed"] >= committed + 2, 60,
                         "two more committed episodes", recorder)
        assert recorder.stop(signal.SIGINT) == 0, recorder.output()
    finally:
        for node in nodes:
            node.stop(signal.SIGKILL)
        probe.close()
        release_domain_id(domain)

    store = EpisodeStore.open(out)
    for i in range(store.n_episodes):
        stamps = store.episode(i)["stamp/applied_commands"]
        gaps = episode_gaps(stamps, 0.015)  # sim time: exactly 0.01 s apart
        assert len(gaps) == 0, f"episode {i} has gaps at steps {gaps}: {np.diff(stamps)[gaps - 1]}"
    assert check(out).ok, check(out).format()
    counters = last_status(status)
    assert counters["gaps"] >= 1, counters  # the stall was seen ...
    assert counters["episodes_cut_at_gaps"] == counters["gaps"], counters  # ... and cut there


def test_messages_lost_on_the_way_split_a_message_sampled_episode(tmp_path):
    raw = {**NO_REWARD, "sample_on": "joint_states"}
    spec = spec_from_dict(copy.deepcopy(raw))
    rec, notes = recorder_on(open_store(tmp_path / "d.zarr", spec), raw, min_part_steps=1)
    feed_all(rec, 1.0)
    rec.start_episode(1.0)
    for k in (1, 2, 3, 5, 6):  # message 4 was lost: its neighbours are 0.2 s apart, not stale
        rec.on_message("joint_states", joint_state([0, k, 0], [0, 0, 0]), 1.0 + 0.1 * k,
                       1.0 + 0.01 * k, sequence=("robot", k))
    rec.stop_episode(None, 1.1)
    rec.shutdown()
    assert rec.status(1.1)["lost_messages"] == {"joint_states": 1}
    store = EpisodeStore.open(tmp_path / "d.zarr")
    assert [store.episode(i)["observation"][:, 0].tolist() for i in range(store.n_episodes)] == [
        [1, 2, 3], [5, 6]]


def test_a_lost_reward_cuts_an_episode_whose_rewards_are_matched_in_order(tmp_path):
    spec = spec_from_dict(copy.deepcopy(EXACT))
    rec, _ = recorder_on(open_store(tmp_path / "d.zarr", spec), EXACT, auto_episodes=True,
                         min_part_steps=1)
    feed = ExactFeed(rec)

    def send(stream, fields, stamp, k):
        feed.now += 0.001
        rec.on_message(stream, fields, stamp, feed.now, sequence=("sim", k))

    send("joint_states", joint_state([0, 0, 0], [0, 0, 0]), stamp_of(0), 0)
    send("applied_commands", applied([0, 0]), stamp_of(0), 0)
    assert rec.on_event("reset", feed.now)[0]
    for k in (1, 2, 4, 5):  # the state, report and reward of step 3 were all lost
        send("joint_states", joint_state([0, k, k], [0, 0, 0]), stamp_of(k), k)
        send("applied_commands", applied([k / 10, 0]), stamp_of(k), k)
        send("reward", {"data": 10.0 * k}, 0.0, k)
    rec.on_event("truncated", feed.now)
    send("joint_states", joint_state([0, 6, 6], [0, 0, 0]), stamp_of(6), 6)
    send("applied_commands", applied([]), stamp_of(6), 6)
    rec.shutdown()
    status = rec.status(feed.now)
    assert status["lost_messages"] == {"joint_states": 1, "applied_commands": 1, "reward": 1}
    assert status["episodes_cut_at_gaps"] == 1 and status["samples_discarded_at_gaps"] == 2
    store = EpisodeStore.open(tmp_path / "d.zarr")
    assert store.n_episodes == 1
    np.testing.assert_array_equal(store.episode(0)["observation"][:, 0], [1, 2])
    np.testing.assert_array_equal(store.episode(0)["reward"], [10, 20])
