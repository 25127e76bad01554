"""Robot spec loading and the recorder's sampling/episode logic, with numpy and a real store."""
import copy
import math

import numpy as np
import pytest
import yaml

from robot_stack.data import EpisodeStore
from robot_stack.errors import ConfigError
from robot_stack.recording import Recorder, StoreWriterThread, open_store, step_keys
from robot_stack.spec import MalformedMessage, load_spec, spec_from_dict

JOINTS = ["rootx", "a", "b"]
SPEC = {
    "task": "toy",
    "robot": {"name": "toy"},
    "rate_hz": 10,
    "observation": [
        {"name": "qpos", "topic": "joint_states", "type": "JointState", "field": "position",
         "joints": ["a", "b"], "unit": "rad"},
        {"name": "qvel", "topic": "joint_states", "type": "JointState", "field": "velocity",
         "joints": ["rootx", "a", "b"], "unit": "rad/s", "units": {"rootx": "m/s"}},
        {"name": "imu", "topic": "imu", "type": "Float64MultiArray", "slice": [1, 3]},
    ],
    "action": {"topic": "commands", "size": 2, "low": -1.0, "high": [1.0, 0.5]},
    "images": [{"name": "rgb", "topic": "camera", "height": 4, "width": 5, "encoding": "rgb8"}],
    "reward": {"topic": "reward"},
    "events": {"topic": "episode_events"},
    "required": ["joint_states", "commands"],
}


def joint_state(position, velocity, names=JOINTS):
    return {"name": names, "position": np.asarray(position, float),
            "velocity": np.asarray(velocity, float), "effort": np.zeros(0)}


def image(value=7, height=4, width=5, encoding="rgb8"):
    return {"height": height, "width": width, "encoding": encoding, "step": width * 3,
            "data": np.full(height * width * 3, value, np.uint8).tobytes()}


def make_recorder(tmp_path, raw=SPEC, **kwargs):
    spec = spec_from_dict(copy.deepcopy(raw))
    store = EpisodeStore.create(tmp_path / "d.zarr", step_keys(spec), task=spec.task,
                                robot=spec.robot_description())
    return Recorder(spec, StoreWriterThread(store), **kwargs)


def feed_all(rec, t, k=0.0):
    """One message on every data stream at time t; values encode k."""
    rec.on_message("joint_states", joint_state([k, k + 1, k + 2], [k, -k, 2 * k]), t - 0.01, t)
    rec.on_message("imu", {"data": [9.0, k, k]}, t, t)
    rec.on_message("camera", image(int(k) % 256), t - 0.02, t)
    rec.on_message("commands", {"data": [k / 100, -k / 100]}, t, t)


def read_back(tmp_path):
    store = EpisodeStore.open(tmp_path / "d.zarr")
    return store, [store.episode(i) for i in range(store.n_episodes)]


# ----- spec -----
def test_shipped_specs_match_the_sim_observation_layout():
    from sim import make_task

    for name, task_name in [("cheetah", "cheetah-run"), ("walker", "walker-walk"),
                            ("hopper", "hopper-hop")]:
        spec = load_spec(f"config/robot_{name}_sim.yaml")
        task = make_task(task_name)
        description = spec.robot_description()
        assert description["observation_layout"] == task.robot_description()["observation_layout"]
        assert description["joint_names"] == task.joint_names
        assert spec.act_dim == task.act_dim and spec.rate_hz == pytest.approx(1 / task.control_dt)
        task.reset(seed=3)
        qpos, qvel = task.qpos_qvel()
        shuffled = np.random.default_rng(0).permutation(len(task.joint_names))
        obs = spec.observation_from_messages({"joint_states": joint_state(
            qpos[shuffled], qvel[shuffled], [task.joint_names[i] for i in shuffled])})
        np.testing.assert_array_equal(obs, task.get_state().astype(np.float32))


def test_observation_from_messages_names_the_missing_topic_or_non_finite_part():
    spec = load_spec("config/robot_cheetah_sim.yaml")
    names = spec.robot_description()["joint_names"]
    with pytest.raises(MalformedMessage, match="no message on joint_states yet"):
        spec.observation_from_messages({})
    velocity = np.zeros(len(names))
    velocity[4] = np.inf
    with pytest.raises(MalformedMessage, match="joint_states: non-finite qvel value"):
        spec.observation_from_messages({"joint_states": joint_state(np.zeros(len(names)),
                                                                    velocity, names)})


@pytest.mark.parametrize("change, message", [
    (lambda s: s.update(speed=1), "unknown keys ['speed']"),
    (lambda s: s.pop("rate_hz"), "missing required key 'rate_hz'"),
    (lambda s: s.update(rate_hz=-5), "rate_hz must be a positive number"),
    (lambda s: s["observation"][0].update(field="torque"), "field must be one of"),
    (lambda s: s["observation"][0].update(joints=[]), "joints must be a non-empty list"),
    (lambda s: s["observation"][0].update(units={"zz": "m"}), "units names joints not in joints"),
    (lambda s: s["observation"][2].update(slice=[3, 1]), "slice must be [start, stop]"),
    (lambda s: s["action"].update(high=[1.0, 2.0, 3.0]), "high must be a number or 2 finite"),
    (lambda s: s["action"].update(low=1.0), "low must be below high"),
    (lambda s: s["images"][0].update(encoding="yuv422"), "encoding 'yuv422' not one of"),
    (lambda s: s.update(required=["odom"]), "required names 'odom'"),
    (lambda s: s.update(sample_on="episode_events"), "sample_on cannot be the events topic"),
    (lambda s: s["reward"].update(topic="commands"), "topic 'commands' used as"),
    (lambda s: s.update(observation_dtype="float16"), "observation_dtype must be float32"),
    (lambda s: s["action"].update(applied={"topic": "applied"}),
     "action.applied needs action.names"),
    (lambda s: s["action"].update(names=["a", "b"], applied={"topic": "applied"}),
     "required names 'commands'"),  # the recorder no longer subscribes the command topic
    (lambda s: s["action"].update(names=["a", "b"], applied={"topic": "applied"}) or s.update(
        sample_on="commands", required=None), "sample_on names the command topic 'commands'"),
])
def test_spec_errors_name_the_problem(change, message):
    raw = copy.deepcopy(SPEC)
    change(raw)
    with pytest.raises(ConfigError) as e:
        spec_from_dict(raw, origin="toy spec")
    assert message in str(e.value) and str(e.value).startswith("toy spec")


def test_load_spec_reports_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("task: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_spec(tmp_path / "bad.yaml")
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(SPEC))
    assert load_spec(tmp_path / "ok.yaml").obs_dim == 2 + 3 + 2


@pytest.mark.parametrize("stream, fields, problem", [
    ("joint_states", joint_state([0, 1], [0, 1], ["rootx", "a"]), "joints ['b'] missing"),
    ("joint_states", joint_state([0, 1, 2], [0, 1]), "3 joint names but 2 velocity values"),
    ("joint_states", joint_state([0, np.nan, 2], [0, 1, 2]), "non-finite qpos"),
    ("imu", {"data": [1.0, 2.0]}, "needs data[1:3]"),
    ("commands", {"data": [0.1, 0.2, 0.3]}, "3 values, expected 2"),
    ("commands", {"data": [0.1, math.inf]}, "non-finite action"),
    ("camera", image(encoding="bgr8"), "encoding 'bgr8', expected 'rgb8'"),
    ("camera", image(height=3), "3x5 image, expected 4x5"),
    ("camera", {**image(), "data": b"\0" * 10}, "10 bytes with step 15"),
    ("reward", {"data": math.nan}, "reward is nan"),
])
def test_malformed_messages_are_rejected_with_a_reason(stream, fields, problem):
    spec = spec_from_dict(copy.deepcopy(SPEC))
    with pytest.raises(MalformedMessage) as e:
        spec.parse(stream, fields)
    assert problem in str(e.value)


# ----- recorder -----
def test_timer_sampling_holds_latest_values_and_records_stamps(tmp_path):
    rec = make_recorder(tmp_path)
    feed_all(rec, 1.0, k=1)
    rec.on_message("reward", {"data": 10.0}, 1.0, 1.0)
    assert rec.start_episode(1.0)[0]
    rec.on_tick(1.05)  # step 0: values of k=1
    rec.on_message("reward", {"data": 11.0}, 1.08, 1.08)  # reward of step 0 (arrives after it)
    rec.on_tick(1.15)  # step 1: held values, nothing new arrived but the reward
    feed_all(rec, 1.2, k=2)
    rec.on_message("reward", {"data": 12.0}, 1.22, 1.22)
    rec.on_tick(1.25)  # step 2: values of k=2
    rec.on_message("reward", {"data": 13.0}, 1.3, 1.3)
    ok, message = rec.stop_episode(True, 1.31)
    assert ok and "3 steps" in message
    rec.shutdown()

    store, [ep] = read_back(tmp_path)
    assert store.episode_meta["success"].tolist() == [1]
    np.testing.assert_allclose(ep["observation"][0], [2, 3, 1, -1, 2, 1, 1])
    np.testing.assert_array_equal(ep["observation"][1], ep["observation"][0])
    np.testing.assert_allclose(ep["observation"][2], [3, 4, 2, -2, 4, 2, 2])
    np.testing.assert_allclose(ep["reward"], [11, 12, 13])  # reward of step t arrives after it
    np.testing.assert_allclose(ep["stamp/joint_states"], [0.99, 0.99, 1.19])
    np.testing.assert_allclose(ep["stamp/camera"], [0.98, 0.98, 1.18])
    np.testing.assert_allclose(ep["stamp/reward"], [1.08, 1.22, 1.3])
    np.testing.assert_allclose(ep["timestamp"], [1.05, 1.15, 1.25])
    assert ep["camera/rgb"].shape == (3, 4, 5, 3) and ep["camera/rgb"][2].max() == 2
    assert ep["terminal"].tolist() == [False, False, False]


def test_sample_on_action_pairs_each_command_with_the_state_it_answered(tmp_path):
    rec = make_recorder(tmp_path, sample_on="commands")
    feed_all(rec, 1.0, k=0)
    assert rec.start_episode(1.0)[0]
    for t in range(1, 6):
        now = 1.0 + t * 0.01
        rec.on_message("joint_states", joint_state([t, t, t], [0, 0, 0]), now, now)
        rec.on_tick(now + 0.004)  # ticks do not sample in this mode
        rec.on_message("commands", {"data": [t / 10, 0.0]}, now + 0.005, now + 0.005)
        if t > 1:  # the reward of step t-1 is handled after command t (callback order race)
            rec.on_message("reward", {"data": 10.0 * (t - 1)}, now + 0.006, now + 0.006)
    rec.on_event("terminal", 1.1)  # ignored: auto_episodes is off
    ok, message = rec.stop_episode(None, 1.1)
    assert ok and rec.state == "closing" and "once its last rewards arrive" in message
    rec.on_message("reward", {"data": 50.0}, 1.11, 1.11)  # completes the episode
    assert rec.state == "idle" and rec.confirm_commits(5.0) == ["committed episode 0 (5 steps)"]
    assert rec.status(1.2)["episodes_committed"] == 1
    rec.shutdown()
    _, [ep] = read_back(tmp_path)
    np.testing.assert_allclose(ep["observation"][:, 0], np.arange(1, 6))
    np.testing.assert_allclose(ep["action"][:, 0], np.arange(1, 6) / 10, rtol=1e-6)
    np.testing.assert_allclose(ep["reward"], [10, 20, 30, 40, 50])
    np.testing.assert_allclose(ep["stamp/reward"], [1.026, 1.036, 1.046, 1.056, 1.11])


def test_sample_whose_reward_never_comes_is_dropped_after_the_wait(tmp_path):
    rec = make_recorder(tmp_path, sample_on="commands", auto_episodes=True)
    feed_all(rec, 1.0)
    rec.on_event("reset", 1.0)
    for t in range(1, 4):
        now = 1.0 + t * 0.01
        rec.on_message("joint_states", joint_state([t, t, t], [0, 0, 0]), now, now)
        rec.on_message("commands", {"data": [0.0, 0.0]}, now, now)
        if t < 3:
            rec.on_message("reward", {"data": float(t)}, now, now)
    rec.on_event("truncated", 1.05)  # the command of step 3 answered the final state
    rec.on_tick(1.1)
    assert rec.state == "closing"
    rec.on_tick(1.3)  # reward_wait_s (0.2 s) is over
    status = rec.status(1.3)
    assert rec.state == "idle" and status["unrewarded_dropped"] == 1
    rec.shutdown()
    _, [ep] = read_back(tmp_path)
    np.testing.assert_allclose(ep["reward"], [1, 2])
    assert ep["terminal"].tolist() == [False, False]


def test_start_is_refused_while_a_required_stream_is_stale(tmp_path):
    rec = make_recorder(tmp_path)
    ok, message = rec.start_episode(0.0)
    assert not ok and "joint_states (never received)" in message and "commands" in message
    feed_all(rec, 1.0)
    ok, message = rec.start_episode(2.0)  # default stale timeout 0.5 s
    assert not ok and "joint_states (last 1.00 s ago)" in message and "imu" not in message
    rec.on_message("joint_states", joint_state([0, 1, 2], [0, 0, 0]), 2.0, 2.0)
    ok, message = rec.start_episode(2.1)
    assert not ok and "commands" in message and "joint_states" not in message
    rec.on_message("commands", {"data": [0.0, 0.0]}, 2.1, 2.1)
    assert rec.start_episode(2.1) == (True, "recording episode 0")
    assert rec.start_episode(2.1)[0] is False
    rec.shutdown()


def test_malformed_messages_are_counted_and_never_written(tmp_path):
    rec = make_recorder(tmp_path)
    feed_all(rec, 1.0, k=1)
    rec.start_episode(1.0)
    rec.on_tick(1.01)
    bad = [("joint_states", joint_state([5, 5], [5, 5], ["a", "b"])),
           ("joint_states", joint_state([5, np.nan, 5], [5, 5, 5])),
           ("camera", image(value=99, encoding="mono8")),
           ("commands", {"data": [0.9]})]
    for stream, fields in bad:
        assert rec.on_message(stream, fields, 1.02, 1.02) is not None
    rec.on_tick(1.11)
    status = rec.status(1.12)
    assert status["malformed"] == {"joint_states": 2, "imu": 0, "camera": 1, "commands": 1,
                                   "reward": 0, "episode_events": 0}
    assert "missing" in status["last_malformed"]["joint_states"] or "non-finite" in \
        status["last_malformed"]["joint_states"]
    rec.stop_episode(None, 1.2)
    rec.shutdown()
    _, [ep] = read_back(tmp_path)
    assert len(ep["observation"]) == 2
    np.testing.assert_array_equal(ep["observation"][0], ep["observation"][1])
    assert ep["camera/rgb"].max() == 1 and np.abs(ep["action"]).max() < 0.5


def test_auto_episodes_follow_sim_events_and_mark_terminal(tmp_path):
    rec = make_recorder(tmp_path, auto_episodes=True, sample_on="commands")
    t = 1.0
    for episode, (length, end) in enumerate([(3, "terminal"), (4, "truncated"), (2, "reset")]):
        feed_all(rec, t)
        ok, message = rec.on_event("reset", t)  # the previous commit may not be confirmed yet
        assert ok and message.startswith(f"recording episode {episode}")
        for _ in range(length):
            t += 0.01
            feed_all(rec, t, k=episode)
            rec.on_message("reward", {"data": 1.0}, t, t)
        rec.on_event(end, t)
    # The last reset committed episode 2 and opened episode 3, which ends without steps.
    assert rec.on_event("truncated", t) == (True, "discarded episode (0 steps) because it has "
                                                  "no steps")
    assert rec.on_event("truncated", t)[1] == "event 'truncated' ignored in state idle"
    rec.shutdown()
    store, eps = read_back(tmp_path)
    assert [len(e["action"]) for e in eps] == [3, 4, 2]
    assert [e["terminal"][-1] for e in eps] == [True, False, False]
    assert not any(e["terminal"][:-1].any() for e in eps)
    assert store.episode_meta["success"].tolist() == [-1] * 3


@pytest.mark.parametrize("on_shutdown, episodes", [("commit", 1), ("discard", 0)])
def test_shutdown_commits_or_discards_the_open_episode(tmp_path, on_shutdown, episodes):
    rec = make_recorder(tmp_path, on_shutdown=on_shutdown)
    feed_all(rec, 1.0)
    rec.start_episode(1.0)
    rec.on_tick(1.05)
    rec.on_tick(1.15)
    rec.shutdown()
    store, eps = read_back(tmp_path)
    assert store.n_episodes == episodes and store.uncommitted_steps == 0
    assert [len(e["action"]) for e in eps] == [2] * episodes


def test_stale_required_stream_skips_samples_and_missed_ticks_are_counted(tmp_path):
    rec = make_recorder(tmp_path)
    feed_all(rec, 1.0)
    rec.start_episode(1.0)
    rec.on_tick(1.1)
    rec.on_tick(1.2)
    rec.on_tick(1.5)  # two periods missed
    rec.on_tick(1.6)  # joint_states last received 0.6 s ago: stale, skipped
    status = rec.status(1.6)
    assert status["dropped_ticks"] == 2 and status["stale_skipped"] == 1
    assert status["stale_skips_by_stream"] == {"joint_states": 1, "commands": 1}
    assert status["stale_streams"] == ["joint_states", "imu", "commands", "camera", "reward"]
    assert status["episode_steps"] == 1  # sample 3 waits for its reward, 2 for the episode end
    assert rec.discard_episode()[0] and rec.stop_episode(None, 1.7) == (
        False, "no episode is recording")
    rec.shutdown()
    store, _ = read_back(tmp_path)
    assert store.n_episodes == 0


def test_actions_outside_bounds_are_clipped_and_counted(tmp_path):
    rec = make_recorder(tmp_path)
    feed_all(rec, 1.0)
    rec.on_message("commands", {"data": [-3.0, 0.9]}, 1.0, 1.0)
    rec.start_episode(1.0)
    rec.on_tick(1.01)
    rec.stop_episode(None, 1.02)
    assert rec.status(1.02)["clipped_actions"] == 1
    rec.shutdown()
    _, [ep] = read_back(tmp_path)
    np.testing.assert_array_equal(ep["action"], [[-1.0, 0.5]])


def test_command_answering_a_state_from_before_the_reset_is_not_recorded(tmp_path):
    rec = make_recorder(tmp_path, auto_episodes=True, sample_on="commands")
    feed_all(rec, 1.0, k=1)  # last state of the previous episode
    rec.on_event("reset", 1.01)
    rec.on_message("commands", {"data": [0.1, 0.1]}, 1.02, 1.02)  # late answer to that state
    rec.on_message("joint_states", joint_state([7, 7, 7], [0, 0, 0]), 1.03, 1.03)  # new s_0
    rec.on_message("commands", {"data": [0.2, 0.2]}, 1.04, 1.04)
    rec.on_message("reward", {"data": 1.0}, 1.045, 1.045)
    rec.on_event("truncated", 1.05)
    assert rec.status(1.05)["pre_reset_skipped"] == 1
    rec.shutdown()
    _, [ep] = read_back(tmp_path)
    np.testing.assert_allclose(ep["observation"][:, 0], [7])
    np.testing.assert_allclose(ep["action"], [[0.2, 0.2]], rtol=1e-6)


def test_a_repeated_state_cuts_an_episode_whose_rewards_are_matched_in_order(tmp_path):
    rec = make_recorder(tmp_path, sample_on="commands", min_part_steps=1)  # rate_hz 10: states 0.1 s apart
    feed_all(rec, 1.0)
    rec.start_episode(1.0)
    for k, stamp in enumerate((1.0, 1.1, 1.2, 1.2, 1.3, 1.5, 1.6)):  # 1.2 answered twice
        rec.on_message("joint_states", joint_state([k, 0, 0], [0, 0, 0]), stamp, 1.7)
        rec.on_message("commands", {"data": [0.0, 0.0]}, 1.7, 1.7)
        rec.on_message("reward", {"data": float(k)}, 1.7, 1.7)
    rec.stop_episode(None, 1.7)
    rec.shutdown()
    status = rec.status(1.8)
    assert status["sample_clock"] == "stamp/joint_states"
    assert (status["gaps"], status["episodes_cut_at_gaps"]) == (1, 1)
    assert status["samples_discarded_at_gaps"] == 4 and status["episodes_committed"] == 1
    _, [ep] = read_back(tmp_path)
    np.testing.assert_array_equal(ep["stamp/joint_states"], [1.0, 1.1, 1.2])
    np.testing.assert_array_equal(ep["reward"], [0, 1, 2])


def test_open_store_appends_to_a_matching_dataset_and_refuses_another(tmp_path):
    spec = spec_from_dict(copy.deepcopy(SPEC))
    store = open_store(tmp_path / "d.zarr", spec)
    episode = store.begin_episode(source="teleop")
    step = {key: np.zeros(k.shape, k.dtype) for key, k in step_keys(spec).items()}
    episode.add_step(step)
    episode.commit()
    episode = store.begin_episode(source="teleop")  # a crash leaves this tail uncommitted
    episode.add_step(step)
    episode.flush()
    store.close()
    store = open_store(tmp_path / "d.zarr", spec)
    assert store.n_episodes == 1 and store.uncommitted_steps == 0
    store.close()
    other = copy.deepcopy(SPEC)
    other["action"]["size"] = 3
    other["action"]["high"] = 1.0
    with pytest.raises(ConfigError, match="use another --out"):
        open_store(tmp_path / "d.zarr", spec_from_dict(other))


# ----- exact pairing by stamp (applied-command reports) -----
EXACT = copy.deepcopy(SPEC)
EXACT["action"].update(names=["a", "b"], applied={"topic": "applied_commands"})
EXACT.update(sample_on="applied_commands", required=["joint_states", "applied_commands"])


def applied(values, names=("a", "b")):
    return {"name": list(names), "position": [], "velocity": [],
            "effort": np.asarray(values, float)}


def stamp_of(k):
    return 10.0 + 0.1 * k  # sim time of state k


class ExactFeed:
    """Messages of a sim that reports applied commands: state k, its command k/10, reward 10k."""

    def __init__(self, rec):
        self.rec, self.now = rec, 1.0

    def _send(self, stream, fields, stamp):
        self.now += 0.001
        return self.rec.on_message(stream, fields, stamp, self.now)

    def state(self, k):
        return self._send("joint_states", joint_state([0, k, k], [0, 0, 0]), stamp_of(k))

    def command(self, k):
        return self._send("applied_commands", applied([k / 10, -k / 10]), stamp_of(k))

    def end(self, k):  # state k is the episode's final state: nothing was applied from it
        return self._send("applied_commands", applied([]), stamp_of(k))

    def reward(self, k):
        return self._send("reward", {"data": 10.0 * k}, 0.0)  # headerless: receive time


def test_spec_with_applied_records_the_report_not_the_commands():
    spec = spec_from_dict(copy.deepcopy(EXACT))
    assert "commands" not in spec.streams and spec.action.topic == "commands"
    stream = spec.streams["applied_commands"]
    assert (stream.role, stream.msg_type, stream.required) == ("action", "JointState", True)
    values = spec.parse("applied_commands", applied([0.5, -0.2], names=["b", "a"]))
    np.testing.assert_array_equal(values["action"], [-0.2, 0.5])  # by name, in action order
    with pytest.raises(MalformedMessage, match=r"joints \['b'\] missing"):
        spec.parse("applied_commands", applied([0.1], names=["a"]))


def test_exact_pairing_is_independent_of_arrival_order_and_drops_unpaired_commands(tmp_path):
    rec = make_recorder(tmp_path, EXACT, min_part_steps=1)
    feed = ExactFeed(rec)
    feed.state(-1)
    feed.command(-1)  # streams fresh; paired while idle: not recorded
    assert rec.pair_by_stamp and rec.start_episode(feed.now)[0]
    feed.command(0)  # before its state: waits
    feed.state(0)
    feed.state(1)
    feed.state(2)
    feed.reward(0)
    feed.command(1)  # the newest state (2) is not its state: paired with state 1
    feed.reward(1)
    feed.command(2)
    feed.reward(2)  # reward before the next command and state
    feed.state(3)
    feed.reward(3)  # a reward before its sample waits for it
    feed.command(3)
    feed.state(5)  # state 4 was lost
    feed.command(4)  # its state can no longer come: dropped at once ...
    feed.reward(4)  # ... and its reward does not go to sample 5
    feed.command(5)
    feed.reward(5)
    feed.command(6)  # state 6 never comes (lost) ...
    rec.on_tick(feed.now + 5.0)  # ... but no clock tells that: the recorder may just be late
    feed.reward(6)
    assert rec.status(feed.now)["unpaired_dropped"] == 1
    feed.state(7)  # a newer state: 6 will not come any more
    assert rec.status(feed.now)["unpaired_dropped"] == 2
    feed.command(7)
    feed.reward(7)
    assert rec.stop_episode(None, feed.now)[0] and rec.state == "idle"
    rec.shutdown()
    status = rec.status(feed.now)
    assert status["unpaired_dropped"] == 2 and status["pairing"] == "exact stamp"
    assert status["unrewarded_dropped"] == 0
    # Samples 5 and 7 were paired and rewarded, but state 4 is missing: the episode is cut
    # there (rewards, matched in order, cannot be trusted after lost messages).
    assert (status["gaps"], status["gap_samples_missing"], status["episodes_cut_at_gaps"],
            status["samples_discarded_at_gaps"]) == (1, 1, 1, 2)
    _, [ep] = read_back(tmp_path)
    taken = np.array([0, 1, 2, 3])
    np.testing.assert_array_equal(ep["observation"][:, 0], taken)
    np.testing.assert_allclose(ep["action"], np.stack([taken / 10, -taken / 10], 1), rtol=1e-6)
    np.testing.assert_array_equal(ep["reward"], 10 * taken)
    np.testing.assert_array_equal(ep["stamp/joint_states"], stamp_of(taken))
    np.testing.assert_array_equal(ep["stamp/applied_commands"], stamp_of(taken))


def test_exact_pairing_cuts_episodes_at_the_end_reports(tmp_path):
    rec = make_recorder(tmp_path, EXACT, auto_episodes=True)
    feed = ExactFeed(rec)
    feed.state(0)
    feed.command(-1)
    feed.reward(0)
    rec.on_event("reset", feed.now)  # taken before the previous episode's last messages
    feed.command(0)  # a late step of the previous episode: its state is before the reset
    feed.state(1)  # the previous episode's final state ...
    feed.end(1)  # ... and its end report, before this episode's first step: not this one's end
    feed.state(2)  # reset state
    feed.command(2)
    feed.state(3)
    feed.reward(2)
    rec.on_event("terminal", feed.now)  # taken before the final state and the reports before it
    feed.command(3)
    feed.state(4)  # final state
    assert rec.state == "closing"  # the end is not known yet
    feed.end(4)
    assert rec.state == "closing"  # ... and reward 3 has not arrived
    feed.reward(3)
    assert rec.state == "idle"
    feed.state(5)
    feed.command(5)  # no episode open: not recorded
    assert rec.status(feed.now)["outside_episode"] == 1
    rec.shutdown()
    _, [ep] = read_back(tmp_path)
    np.testing.assert_array_equal(ep["observation"][:, 0], [2, 3])
    np.testing.assert_allclose(ep["action"][:, 0], [0.2, 0.3], rtol=1e-6)
    np.testing.assert_array_equal(ep["reward"], [20, 30])
    assert ep["terminal"].tolist() == [False, True]
