"""Recorder logic without rclpy: latest-value sampling, staleness, episode control, counters.

The recorder node (ros_nodes/recorder_node.py) feeds every message to `Recorder.on_message`,
calls `on_tick` from its timer and forwards service calls and episode events. Everything that
decides what lands in the dataset is here and testable with numpy arrays.

Sampling. Every stream keeps its latest valid message (latest-value hold). A sample takes one
value per stream either on a timer at `rate_hz` (default) or, with `sample_on: <topic>`, each
time a message arrives on that topic. The timer suits sources that publish at their own pace;
it pairs state s_t with action a_t only if it fires after a_t arrives and before s_{t+1} does,
so with a controller that answers each state it mixes (s_t, a_t) and (s_{t+1}, a_t) pairs.
Sampling on the action topic records exactly the state each command answered (the newest
state when the command arrives), at the controller's rate.

Exact pairing by stamp (message_filters ExactTime semantics). With `action.applied` in the
spec and sample_on on that topic, the robot reports each command it applied as a JointState
stamped with the stamp of the state it was applied from. Each applied command is paired with
the message of the identical stamp on every JointState observation topic (other streams: their
latest value): the last STATE_HISTORY states are kept for their commands, and an applied
command waits for its state until a newer state arrives (a topic's messages arrive in order, so
its own will not come any more), until STATE_HISTORY commands wait, or until its episode is
closed. Then it is dropped and counted (unpaired_dropped), never written with another state.
No wall-clock timeout applies to a single pair: a recorder process descheduled for a while
finds the states it missed queued, in order, when it runs again. Arrival order between
topics (which DDS does not guarantee across subscribers) does not matter. Episodes are cut by
stamp as well, between a start and an end stamp (samples outside are counted, not written). The
start is the newest state stamp received at the "reset" event (or start_episode): the sim
publishes "reset" before the episode's first state, and the recorder takes the events first.
The end is exact: the sim reports the episode's final state with an empty applied command
(nothing was applied from it), and the terminal/truncated event waits for that report, the
last pairs and their rewards (up to pair_timeout_s in all); an end report that arrives before
the episode's first step is the previous episode's and moves the start instead. A stop
without an end report ends at the newest state received.

Alignment of reward. The sim publishes the reward of (s_t, a_t) together with s_{t+1}, i.e.
after sample t was taken, so a sample waits for its reward. With sample_on, rewards are matched
to samples in order, one reward message per sample: the executor may run the callback of
a_{t+1} before that of r_t when both are queued, so "latest reward at the next sample" would
shift rewards by one step. With exact pairing, the sim publishes exactly one reward per applied
command (same tick), so the k-th reward of an episode is the k-th step report's: rewards also
wait for their samples (any order between the two topics within an episode), and a step report
that was dropped keeps its place so that its reward is skipped, not given to the next sample.
The one order relied on: the rewards of an episode reach the recorder before the next "reset"
event (the sim publishes them before its end report and the event; the closing episode waits
for its end report and rewards before it commits, and "reset" comes a lockstep round trip
later). Rewards carry no stamp (std_msgs/Float64); a reward arriving after the next episode
started would shift that episode's rewards. At the episode's end the recorder waits up to reward_wait_s for the
last rewards (state "closing"); a sample whose reward never comes (the command that answered
the final state) is dropped. On a timer, a sample's reward is the latest reward at the next
sample. The last step is held back until the episode ends, to set its terminal flag.

Each step also records `stamp/<stream>`: the source stamp (header stamp, or receive time for
headerless messages) of the value used, 0 if the stream never delivered, so synchronisation
can be audited offline.

Gap policy. A committed episode is one contiguous sequence of samples
(robot_stack/data/continuity.py). The recorder checks each step as it hands it to the writer,
so every cause is covered: the step is not contiguous with the last step written when
  - the recorder knows a sample in between was lost: an applied command whose state never
    came, a stale stream, a full writer queue, dropped timer ticks, or messages of the sampled
    stream that never arrived (a jump in the publisher's sequence numbers, which the node
    passes on where the middleware numbers messages: a stalled recorder's overflowing queues,
    a burst);
  - or its sample clock (the sampled stream's stamp, the recorder clock on a timer) steps by
    zero or less (a repeated state, stitched rows) or by more than the larger of 1.5 periods
    and the stream's stale timeout (a timer: 1.5 periods); shorter late steps are what a source
    stamping with wall time does without losing anything.
At such a gap:
  - the steps before it are committed as an episode of their own (success unknown, last step
    not terminal), or discarded if fewer than min_part_steps (10);
  - with rewards matched in order (sample_on with a reward topic), the rest of the episode is
    discarded up to its end ("cut"): rewards carry no stamp, so after lost messages no sample's
    reward is known for sure (a lost reward message cuts the episode before its first sample
    still waiting for a reward);
  - otherwise (timer sampling, or no reward topic), the samples after the gap go on as a new
    episode ("split").
~/status counts gaps, gap_samples_missing (sample periods without a sample), the episodes
split and cut at gaps, short_parts_discarded, samples_discarded_at_gaps and lost_messages per
stream; `data check` reports gaps left in a dataset (by the stamp rule: losses shorter than the
stale timeout in wall-clock stamps are only visible to the recorder).

Commits are confirmed. The writer thread answers each commit with the episode's index on disk
or the error that failed it (a full disk: the episode is lost, the episodes before it stay
intact, and the next episode is tried afresh, so recording recovers once space returns). An
episode counts as committed, and `episode` advances, only on that answer (confirm_commits, run
on every tick); the stop service waits for it up to commit_wait_s and otherwise answers
"commit pending". Every setting is checked at start-up (check_settings).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from robot_stack.data import EpisodeStore, KeySpec, standard_keys
from robot_stack.data.continuity import contiguous, max_step_s, missing_samples, sample_clock
from robot_stack.errors import ConfigError
from robot_stack.spec import JOINT_STATE, MalformedMessage, RobotSpec

IDLE, RECORDING, CLOSING = "idle", "recording", "closing"
STATE_HISTORY = 100  # exact pairing: stamped states kept per stream for commands to find
EVENT_RESET, EVENT_TERMINAL, EVENT_TRUNCATED = "reset", "terminal", "truncated"
RECORDED_SOURCES = ("teleop", "scripted", "sim")  # episode_source values a recording may have
LOSS_MARK = "losses_before"  # in a step until it is written: the Recorder's _losses at its sample
LOST = {}  # exact pairing: in the pending reports, where reports were lost (sequence numbers)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# setting: (holds for a valid value, what a valid value is); `spec` is the robot spec
SETTING_RULES = {
    "source": (lambda v, spec: v in RECORDED_SOURCES, f"one of {', '.join(RECORDED_SOURCES)}"),
    "on_shutdown": (lambda v, spec: v in ("commit", "discard"), "commit or discard"),
    "auto_episodes": (lambda v, spec: isinstance(v, bool), "true or false"),
    "sample_on": (lambda v, spec: v is None or (v in spec.streams
                                                and spec.streams[v].role != "events"),
                  "'timer' or a data topic of the spec"),
    "reward_wait_s": (lambda v, spec: _number(v) and v >= 0, "a finite number of seconds >= 0"),
    "pair_timeout_s": (lambda v, spec: _number(v) and v > 0, "a finite number of seconds > 0"),
    "commit_wait_s": (lambda v, spec: _number(v) and v > 0, "a finite number of seconds > 0"),
    "min_part_steps": (lambda v, spec: isinstance(v, int) and not isinstance(v, bool)
                       and v >= 1, "a whole number >= 1"),
    "flush_period_s": (lambda v, spec: _number(v) and v > 0, "a finite number of seconds > 0"),
    "status_rate": (lambda v, spec: _number(v) and v > 0, "a finite rate in Hz > 0"),
    "max_queued_steps": (lambda v, spec: isinstance(v, int) and not isinstance(v, bool)
                         and v >= 1, "a whole number >= 1"),
}


def check_settings(spec: RobotSpec | None, **settings) -> None:
    """Raises ConfigError, in one line, naming the first recorder setting that is invalid."""
    for name, value in settings.items():
        valid, wanted = SETTING_RULES[name]
        if not valid(value, spec):
            raise ConfigError(f"recorder setting {name} must be {wanted}, got {value!r}")


def step_keys(spec: RobotSpec) -> dict[str, KeySpec]:
    """Dataset keys the recorder writes: the standard keys (reward only if the spec has a reward
    topic), camera/<name>, stamp/<stream>."""
    keys = standard_keys(spec.obs_dim, spec.act_dim, obs_dtype=spec.observation_dtype,
                         reward=spec.reward_topic is not None)
    for image in spec.images:
        keys[image.key] = KeySpec(image.shape, "uint8")
    for s in spec.streams.values():
        if s.role != "events":
            keys[f"stamp/{s.name}"] = KeySpec((), "float64")
    return keys


def open_store(path, spec: RobotSpec) -> EpisodeStore:
    """Create the store for `spec`, or reopen one whose keys match (dropping a crashed tail)."""
    keys = step_keys(spec)
    if not Path(path).exists():
        return EpisodeStore.create(path, keys, task=spec.task, robot=spec.robot_description())
    store = EpisodeStore.open(path, mode="a")
    have = {k: (v.shape, v.dtype) for k, v in store.keys.items()}
    want = {k: (v.shape, v.dtype) for k, v in keys.items()}
    if have != want or store.task != spec.task:
        store.close()
        raise ConfigError(f"{path} holds task {store.task!r} with keys {have}; the spec records "
                          f"task {spec.task!r} with keys {want}: use another --out")
    store.trim_uncommitted()
    return store


@dataclass
class _Latest:
    values: dict | None = None  # parsed values of the latest valid message
    stamp: float = 0.0  # source stamp of that message; 0 until one arrives
    received: float = -math.inf  # receive time (recorder clock)
    count: int = 0
    malformed: int = 0
    lost: int = 0  # messages that never arrived, by their publishers' sequence numbers
    last_problem: str = ""
    stale_skips: int = 0  # samples skipped while this stream was stale


@dataclass
class Counters:
    samples: int = 0  # steps handed to the writer, all episodes
    dropped_ticks: int = 0  # timer mode: periods that passed without a tick (executor too busy)
    late_ticks: int = 0  # timer mode: ticks more than half a period late
    stale_skipped: int = 0  # samples not taken while recording because a required stream was stale
    pre_reset_skipped: int = 0  # samples not taken because the state predates the sim's reset
    unrewarded_dropped: int = 0  # samples at an episode's end whose reward never came
    unpaired_dropped: int = 0  # exact pairing: applied commands whose state never came (also at
    # start-up, before the state subscription matched)
    outside_episode: int = 0  # exact pairing: samples whose stamp lies outside the episode's
    queue_dropped: int = 0  # steps lost because the writer fell behind
    clipped_actions: int = 0  # actions outside [low, high], recorded clipped
    episodes_committed: int = 0  # confirmed on disk by the writer
    episodes_discarded: int = 0
    episodes_failed: int = 0  # the writer could not write or commit them (nothing of them kept)
    gaps: int = 0  # samples not contiguous with the one before in their episode (see continuity)
    gap_samples_missing: int = 0  # sample periods without a sample at those gaps
    episodes_split_at_gaps: int = 0  # gaps where the episode went on as a new one
    episodes_cut_at_gaps: int = 0  # gaps after which the rest of the episode was discarded
    short_parts_discarded: int = 0  # parts before a gap under min_part_steps, not committed
    samples_discarded_at_gaps: int = 0  # recorded samples of discarded rests and short parts
    # sample taken -> step in the store writer's buffer (on disk within flush_period_s more);
    # the source stamp -> sample part is in the dataset: timestamp - stamp/<stream>
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0
    latency_count: int = 0


@dataclass(frozen=True)
class CommitResult:
    """The writer's answer to a commit: the episode's index on disk, or why it is not there."""
    index: int | None
    error: str = ""


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class _LazyEpisode:
    """An episode that is begun in the store only once it has OPEN_AFTER_STEPS steps or a flush
    or commit is due: a part discarded at once (a short part before a gap) costs the store
    nothing, which matters when losses come in runs (each begin reads the last committed chunk
    of every key back from disk)."""

    OPEN_AFTER_STEPS = 16  # above min_part_steps' default; bounded memory with images

    def __init__(self, store, source: str, start_time: float):
        self._store, self._source, self._start_time = store, source, start_time
        self._steps: list[dict] = []
        self._episode = None

    def _open(self):
        if self._episode is None:
            self._episode = self._store.begin_episode(source=self._source,
                                                      start_time=self._start_time)
            for step in self._steps:
                self._episode.add_step(step)
            self._steps = []
        return self._episode

    def add_step(self, step: dict) -> None:
        if self._episode is None and len(self._steps) + 1 < self.OPEN_AFTER_STEPS:
            self._steps.append(step)
        else:
            self._open().add_step(step)

    def flush(self) -> None:
        self._open().flush()

    def commit(self, success: bool | None) -> int:
        return self._open().commit(success=success)

    def discard(self) -> None:
        if self._episode is not None:
            self._episode.discard()


class StoreWriterThread:
    """Runs the episode store's streaming writer on its own thread.

    Store writes (chunk compression, file I/O) take milliseconds; doing them on the ROS
    executor thread would delay message callbacks and timer ticks. Control operations are
    queued in order with the steps, so a commit always follows the steps before it, and each
    commit is answered through the Future `commit` returns (a CommitResult) once the episode is
    on disk or has failed.

    A failed write (a full disk, an I/O error) fails the open episode: its rows are trimmed
    (or, if even that fails, left as an uncommitted tail that the next episode overwrites),
    its later steps are dropped and its commit is answered with the error. Episodes committed
    before it are untouched (the store never rewrites committed rows), and the next episode
    starts afresh: once space returns, recording recovers by itself. `error` holds the latest
    failure until a commit succeeds again.
    """

    def __init__(self, store, max_queued_steps: int = 2000, flush_period_s: float = 1.0):
        check_settings(None, max_queued_steps=max_queued_steps, flush_period_s=flush_period_s)
        self._store = store
        self._flush_period_s = flush_period_s
        self._queue: queue.Queue = queue.Queue()
        self._queued_steps = 0
        self._max_queued_steps = max_queued_steps
        self._lock = threading.Lock()
        self.counters: Counters | None = None  # set by Recorder; updated from this thread
        self.error: str = ""
        self._thread = threading.Thread(target=self._run, name="episode-writer", daemon=True)
        self._thread.start()

    def begin(self, source: str, start_time: float) -> None:
        self._queue.put(("begin", (source, start_time)))

    def has_room(self) -> bool:
        """Whether a step can be queued (the writer only ever makes more room meanwhile)."""
        return self._queued_steps < self._max_queued_steps

    def add(self, step: dict) -> None:
        with self._lock:
            self._queued_steps += 1
        self._queue.put(("step", (step, time.monotonic())))

    def commit(self, success: bool | None) -> Future:
        """Commit the episode after the steps queued before; the Future gives a CommitResult."""
        confirmation: Future = Future()
        self._queue.put(("commit", (success, confirmation)))
        return confirmation

    def discard(self) -> None:
        self._queue.put(("discard", None))

    def close(self) -> None:
        """Write everything queued, then close the store."""
        self._queue.put(("close", None))
        self._thread.join()

    @property
    def queued_steps(self) -> int:
        return self._queued_steps

    def _run(self) -> None:
        episode = None  # the open EpisodeWriter; None when none is open or it failed
        failure = ""  # why the open episode failed
        next_flush = time.monotonic() + self._flush_period_s
        while True:
            try:
                op, arg = self._queue.get(timeout=self._flush_period_s)
            except queue.Empty:
                op, arg = "flush", None
            if op == "step":
                with self._lock:
                    self._queued_steps -= 1
            if op == "commit":
                episode, failure = self._commit(episode, failure, *arg)
                continue
            if op == "close":
                self._store.close()
                return
            try:
                if episode is not None and time.monotonic() >= next_flush:
                    # The store buffers up to a few MB per key; flushing bounds what a crash
                    # of the recorder can lose of the open episode to about flush_period_s.
                    episode.flush()
                    next_flush = time.monotonic() + self._flush_period_s
                if op == "begin":
                    failure = ""
                    episode = _LazyEpisode(self._store, *arg)
                elif op == "step" and episode is not None:
                    episode.add_step(arg[0])
                    self._note_latency(time.monotonic() - arg[1])
                elif op == "discard":
                    discarded, episode, failure = episode, None, ""
                    if discarded is not None:
                        discarded.discard()
            except Exception as e:  # the episode fails; the recorder goes on (see the class doc)
                failure = self.error = f"{op}: {_describe(e)}"
                self._abandon(episode)
                episode = None

    def _commit(self, episode, failure: str, success, confirmation: Future) -> tuple[None, str]:
        """Commit the open episode and answer `confirmation`; returns the writer's new state."""
        if episode is None:
            confirmation.set_result(CommitResult(None, failure or "no episode was begun"))
            return None, ""
        committed_before = self._store.n_episodes
        try:
            index = episode.commit(success=success)
        except Exception as e:
            if self._store.n_episodes > committed_before:  # published; a write after it failed
                index = committed_before
                self.error = f"commit (after episode {index} was published): {_describe(e)}"
            else:
                self.error = f"commit: {_describe(e)}"
                self._abandon(episode)
                confirmation.set_result(CommitResult(None, self.error))
                return None, ""
        else:
            self.error = ""
        confirmation.set_result(CommitResult(index))
        return None, ""

    def _abandon(self, episode) -> None:
        """End a failed episode so that the store takes the next one."""
        if episode is None:
            return
        try:
            episode.discard()  # trims the rows it wrote
        except Exception:  # its rows stay an uncommitted tail, which the next episode overwrites
            pass

    def _note_latency(self, latency: float) -> None:
        c = self.counters
        if c is not None:
            c.latency_sum_s += latency
            c.latency_max_s = max(c.latency_max_s, latency)
            c.latency_count += 1


class Recorder:
    """Sampler + episode state machine over one episode store.

    `now` arguments are the recorder clock in seconds (ROS time: wall or /clock). Methods
    return (ok, message) where a service answers, so the node can pass them through. The node
    calls `on_tick` at rate_hz in both sampling modes (it also ends the reward wait).
    """

    def __init__(self, spec: RobotSpec, writer: StoreWriterThread, *, first_episode: int = 0,
                 source: str = "teleop", auto_episodes: bool = False,
                 on_shutdown: str = "commit", sample_on: str | None = None,
                 reward_wait_s: float = 0.2, pair_timeout_s: float = 2.0,
                 commit_wait_s: float = 5.0, min_part_steps: int = 10, notify=None):
        self.sample_on = sample_on if sample_on is not None else spec.sample_on
        check_settings(spec, source=source, auto_episodes=auto_episodes, on_shutdown=on_shutdown,
                       sample_on=self.sample_on, reward_wait_s=reward_wait_s,
                       pair_timeout_s=pair_timeout_s, commit_wait_s=commit_wait_s,
                       min_part_steps=min_part_steps)
        self.spec = spec
        self.writer = writer
        self.source = source
        self.auto_episodes = auto_episodes
        self.on_shutdown = on_shutdown
        self.reward_wait_s = reward_wait_s
        self.commit_wait_s = commit_wait_s  # how long the stop service waits for the writer
        # A part before a gap shorter than this is discarded: too short to learn from, and a
        # commit per lost message would keep the writer busy (and the GIL) when losses come
        # in runs (an overloaded 1 kHz recording).
        self.min_part_steps = min_part_steps
        # told how each episode ended: notify(message, error=False)
        self._notify = notify if notify is not None else (lambda message, error=False: None)
        self.period = 1.0 / spec.rate_hz
        self.latest = {name: _Latest() for name in spec.streams}
        self.counters = Counters()
        writer.counters = self.counters
        self.state = IDLE
        self.episode_index = first_episode  # index the next committed episode gets (confirmed)
        self.episode_steps = 0  # steps handed to the writer in this episode (or part)
        self._commits: deque[tuple[Future, int, str]] = deque()  # unconfirmed: (answer, steps,
        # what it was)
        self._clock_key = sample_clock(spec, self.sample_on)  # see robot_stack/data/continuity
        self._max_step = max_step_s(spec, self._clock_key)
        self._episode_clock: float | None = None  # sample clock of the last step written
        # Losses the recorder knows of (samples it dropped, messages lost on the way), counted
        # in sample order: steps taken on either side of one are not contiguous.
        self._losses = 0
        self._written_losses = 0  # _losses when the last step written was sampled
        self._write_lost = False  # a step was dropped since the last step written
        self._cut = False  # the episode was cut at a gap: its remaining samples are discarded
        self._sequences: dict[tuple, int] = {}  # (stream, publisher): last sequence number
        self._unrewarded: deque[dict] = deque()  # samples waiting for their reward
        self._last: dict | None = None  # newest complete step, held back for its terminal flag
        self._closing: tuple | None = None  # (success, terminal, deadline) while CLOSING
        self._last_tick: float | None = None
        self._reset_time: float | None = None  # of the reset event that started the episode
        self._value_streams = [s for s in spec.streams.values() if s.role != "events"]
        self._reward_stream = next(
            (s.name for s in self._value_streams if s.role == "reward"), None)
        # With sample_on, every sample is answered by exactly one reward message (the sim
        # publishes r_t with s_t+1): rewards are matched to samples in order. On a timer, the
        # reward of a sample is the latest reward at the next sample.
        self._match_rewards = self._reward_stream is not None and self.sample_on is not None
        self._blank = {s.name: self._blank_values(s) for s in self._value_streams}
        self._required_observations = [s.name for s in self._value_streams
                                       if s.role == "observation" and s.required]
        self._events_stream = next(
            (s.name for s in spec.streams.values() if s.role == "events"), None)
        sampled = spec.streams.get(self.sample_on)
        self.pair_by_stamp = (sampled is not None and sampled.role == "action"
                              and sampled.msg_type == JOINT_STATE)
        self.pair_timeout_s = pair_timeout_s
        self._history = {s.name: deque(maxlen=STATE_HISTORY) for s in self._value_streams
                         if self.pair_by_stamp and s.role == "observation"
                         and s.msg_type == JOINT_STATE}  # (stamp, values) per stamped state
        if self.pair_by_stamp and not self._history:
            raise ValueError("sample_on an applied-command report pairs it by stamp with a "
                             "JointState observation topic; the spec has none")
        self._pending: deque[tuple] = deque()  # applied commands waiting: (stamp, values)
        self._resolved_stamp = -math.inf  # newest applied command paired or dropped
        self._rewards: deque[tuple] = deque()  # exact pairing: rewards waiting for samples
        self._bounds = (-math.inf, math.inf)  # exact pairing: stamps of the episode, exclusive
        self._episode_reports = 0  # exact pairing: step reports within the bounds this episode

    # ----- inputs -----
    def on_message(self, stream: str, fields: dict, stamp: float, now: float,
                   sequence: tuple | None = None) -> str | None:
        """Hold a message's values; returns the problem if it was malformed (and skipped).
        sequence: (publisher id, publication sequence number) where the middleware tells."""
        latest = self.latest[stream]
        if sequence is not None:
            self._count_lost(stream, sequence, stamp)
        try:
            values = self.spec.parse(stream, fields)
        except MalformedMessage as e:
            latest.malformed += 1
            latest.last_problem = str(e)
            return str(e)
        latest.values, latest.stamp, latest.received = values, stamp, now
        latest.count += 1
        if self.pair_by_stamp:
            self._on_stamped(stream, values, stamp, now)
        elif stream == self.sample_on and self.state == RECORDING:
            self._sample(now)
        elif stream == self._reward_stream and self._match_rewards and self._unrewarded:
            self._complete(self._with_reward(self._unrewarded.popleft()))
            if self.state == CLOSING and not self._unrewarded:
                self._finish()
        return None

    def _count_lost(self, stream: str, sequence: tuple, stamp: float) -> None:
        """Messages lost before this one (a stalled recorder's queues overflowed, a burst):
        samples lost on the sampled stream, reward order lost on a reward stream."""
        publisher, number = sequence
        last = self._sequences.get((stream, publisher))
        self._sequences[(stream, publisher)] = number
        if last is None or number <= last + 1:  # first message, in order, or a restart
            return
        self.latest[stream].lost += number - last - 1
        if self.state == IDLE:
            return
        if stream == self.sample_on:
            if self.pair_by_stamp:  # reports are sampled in stamp order, this one later
                self._pending.append((stamp, LOST))
            else:
                self._losses += 1
        elif stream == self._reward_stream and self._match_rewards:
            self._rewards_lost()

    def _rewards_lost(self) -> None:
        """Rewards are matched in order: after a lost one, no waiting sample's reward is known.
        The samples completed so far are committed, the rest of the episode is discarded."""
        if self._last is not None:
            self._write(self._last)
            self._last = None
        self.counters.samples_discarded_at_gaps += sum(
            step is not None for step in self._unrewarded)
        self._unrewarded.clear()
        self._rewards.clear()
        if not self._cut and self.episode_steps:
            self.counters.gaps += 1
            self._cut_at(", the part before a lost reward")
        self._cut = True

    def on_tick(self, now: float) -> None:
        """Timer callback: count missed periods, sample (timer mode), end a reward wait."""
        if self.sample_on is None and self._last_tick is not None:
            periods = (now - self._last_tick) / self.period
            self.counters.dropped_ticks += max(0, int(round(periods)) - 1)
            if periods >= 1.5 and self.state == RECORDING:
                self._losses += 1
            if periods - math.floor(periods) > 0.5 and periods < 2:
                self.counters.late_ticks += 1
        self._last_tick = now
        if self.sample_on is None and self.state == RECORDING:
            self._sample(now)
        if self.state == CLOSING and now >= self._closing[2]:
            self._finish()
        self.confirm_commits()

    def on_event(self, event: str, now: float) -> tuple[bool, str]:
        """Episode events from the sim; act on them only with auto_episodes."""
        self.latest[self._events_stream].count += 1
        if not self.auto_episodes:
            return True, "ignored (auto_episodes off)"
        if event == EVENT_RESET:
            if self.state == RECORDING:  # reset without terminal/truncated first
                self.stop_episode(None, now)
            ok, message = self.start_episode(now)
            # States received before the reset belong to the previous episode: a command that
            # answered one of them and arrives late must not become this episode's first step.
            self._reset_time = now if ok else None
            return ok, message
        if event in (EVENT_TERMINAL, EVENT_TRUNCATED) and self.state == RECORDING:
            return self.stop_episode(None, now, terminal=event == EVENT_TERMINAL,
                                     at_end_report=self.pair_by_stamp)
        return True, f"event {event!r} ignored in state {self.state}"

    # ----- episode control -----
    def stale_streams(self, now: float, required_only: bool = False) -> list[str]:
        return [s.name for s in self._value_streams
                if (s.required or not required_only)
                and now - self.latest[s.name].received > s.stale_timeout_s]

    def start_episode(self, now: float) -> tuple[bool, str]:
        if self.state == CLOSING:
            self._finish()
        if self.state == RECORDING:
            return False, f"episode {self.episode_index} is already recording"
        stale = self.stale_streams(now, required_only=True)
        if stale:
            return False, "required streams stale or never received: " + ", ".join(
                f"{name} ({self._age(name, now)})" for name in stale)
        self.writer.begin(self.source, time.time())
        self.state, self.episode_steps = RECORDING, 0
        self._last_tick = self._reset_time = self._episode_clock = None
        self._cut = self._write_lost = False
        # exact pairing: the episode takes the states received from now on
        self._bounds = (self._newest_state_stamp() if self.pair_by_stamp else -math.inf,
                        math.inf)
        self._rewards.clear()  # of the previous episode's steps
        self._episode_reports = 0
        self.confirm_commits()
        pending = f" ({len(self._commits)} commit(s) before it not yet confirmed)" \
            if self._commits else ""
        return True, f"recording episode {self.episode_index + len(self._commits)}{pending}"

    def stop_episode(self, success: bool | None, now: float, terminal: bool = False,
                     at_end_report: bool = False, wait_s: float = 0.0) -> tuple[bool, str]:
        """Commit the episode; with samples still waiting for their reward, after at most
        reward_wait_s (state CLOSING; samples whose reward never comes are dropped).
        Exact pairing: the episode ends at the robot's end report (at_end_report) or else at
        the newest state received. With wait_s (the stop service), a commit handed to the
        writer is waited for up to wait_s, and the answer says what the writer confirmed."""
        if self.state != RECORDING:
            return False, "no episode is recording"
        if wait_s > 0:
            handed = len(self._commits)
            ok, message = self.stop_episode(success, now, terminal, at_end_report)
            if not ok or len(self._commits) == handed:  # closing, or discarded
                return ok, message
            return self._answer_commits(wait_s)
        wait = self.pair_timeout_s if self.pair_by_stamp else self.reward_wait_s
        self._closing = (success, terminal, now + wait)
        self.state = CLOSING
        if self.pair_by_stamp:
            if not at_end_report:
                self._bounds = (self._bounds[0], min(self._bounds[1], self._newest_state_stamp()))
            if not self._closed():
                return True, (f"committing episode {self.episode_index} once its last steps "
                              "are paired and rewarded")
        if self._match_rewards and self._unrewarded:
            return True, f"committing episode {self.episode_index} once its last rewards arrive"
        return self._finish()

    def discard_episode(self, reason: str = "") -> tuple[bool, str]:
        if self.state == IDLE:
            return False, "no episode is recording"
        self._unrewarded.clear()
        self._rewards.clear()
        self._last = None
        if self._cut:  # its part before the gap was committed; the writer holds no episode
            self.state, self._cut = IDLE, False
            message = "discarded the episode's samples after a gap" + (
                f" because {reason}" if reason else "")
            self._notify(message)
            return True, message
        self.writer.discard()
        self.counters.episodes_discarded += 1
        self.state = IDLE
        message = f"discarded episode ({self.episode_steps} steps)" + (
            f" because {reason}" if reason else "")
        self._notify(message)
        return True, message

    def shutdown(self) -> str:
        """Commit or discard the open episode as configured (without waiting for rewards still
        on their way), then write out and close."""
        message = "no episode open"
        if self.state != IDLE and self.on_shutdown == "discard":
            message = self.discard_episode(reason="the recorder shut down")[1]
        elif self.state == RECORDING:
            self.stop_episode(None, math.inf)
        if self.state == CLOSING:
            message = self._finish()[1]
        self.writer.close()  # writes everything queued: every commit is answered
        return "; ".join(self.confirm_commits()) if self._commits else message

    def _finish(self) -> tuple[bool, str]:
        """End a CLOSING episode: write the held-back step with its terminal flag, commit."""
        success, terminal, _ = self._closing
        start, end = self._bounds
        unpaired = [p for p in self._pending if start < p[0] < end]  # waited too long
        self.counters.unpaired_dropped += len(unpaired)
        self._pending = deque(p for p in self._pending if not start < p[0] < end)
        if not self._match_rewards and self._unrewarded:
            self._complete(self._with_reward(self._unrewarded.popleft()))
        self.counters.unrewarded_dropped += sum(step is not None for step in self._unrewarded)
        self._unrewarded.clear()
        if self._last is not None:
            self._last["terminal"] = np.bool_(terminal)
            self._write(self._last)
            self._last = None
        if self._cut:
            self.state, self._cut = IDLE, False
            message = "episode ended; its samples after a gap were discarded"
            self._notify(message)
            return True, message
        if self.episode_steps == 0:
            return self.discard_episode(reason="it has no steps")
        message = f"committing episode ({self.episode_steps} steps)"
        self._hand_commit(success)
        self.state = IDLE
        return True, message

    # ----- commits, confirmed by the writer -----
    def _hand_commit(self, success: bool | None, what: str = "") -> None:
        self._commits.append((self.writer.commit(success), self.episode_steps, what))
        self.episode_steps = 0

    def confirm_commits(self, wait_s: float = 0.0) -> list[str]:
        """Takes the writer's answers to the commits handed to it, in order (waiting up to
        wait_s for all of them); counts, logs and returns one message per answered commit.
        An episode counts as committed, and the episode index advances, only here."""
        if wait_s > 0 and self._commits:
            wait_futures([answer for answer, _, _ in self._commits], timeout=wait_s)
        messages = []
        while self._commits and self._commits[0][0].done():
            answer, steps, what = self._commits.popleft()
            result = answer.result()
            if result.index is None:
                self.counters.episodes_failed += 1
                messages.append(f"episode of {steps} steps{what} NOT committed: {result.error}")
                self._notify(messages[-1], error=True)
            else:
                self.counters.episodes_committed += 1
                self.episode_index = result.index + 1
                messages.append(f"committed episode {result.index} ({steps} steps{what})")
                self._notify(messages[-1])
        return messages

    def _answer_commits(self, wait_s: float) -> tuple[bool, str]:
        """(ok, message) for a service that handed commits to the writer: the confirmations,
        or "commit pending" for those the writer has not answered within wait_s."""
        failed_before = self.counters.episodes_failed
        messages = self.confirm_commits(wait_s)
        failed = self.counters.episodes_failed > failed_before
        if self._commits:
            steps = sum(steps for _, steps, _ in self._commits)
            messages.append(f"commit pending: {len(self._commits)} episode(s) of {steps} steps "
                            f"not confirmed on disk within {wait_s:g} s")
        return not failed, "; ".join(messages)

    # ----- status -----
    def status(self, now: float) -> dict:
        c = self.counters
        return {
            "state": self.state,
            "episode": self.episode_index,
            "episode_steps": self.episode_steps,
            "episodes_committed": c.episodes_committed,
            "episodes_discarded": c.episodes_discarded,
            "episodes_failed": c.episodes_failed,
            "commits_pending": len(self._commits),
            "samples": c.samples,
            "sample_on": self.sample_on or f"timer {self.spec.rate_hz:g} Hz",
            "dropped_ticks": c.dropped_ticks,
            "late_ticks": c.late_ticks,
            "stale_skipped": c.stale_skipped,
            "stale_skips_by_stream": {n: s.stale_skips for n, s in self.latest.items()
                                      if s.stale_skips},
            "pre_reset_skipped": c.pre_reset_skipped,
            "unrewarded_dropped": c.unrewarded_dropped,
            "sample_clock": self._clock_key,
            "gaps": c.gaps,
            "gap_samples_missing": c.gap_samples_missing,
            "episodes_split_at_gaps": c.episodes_split_at_gaps,
            "episodes_cut_at_gaps": c.episodes_cut_at_gaps,
            "short_parts_discarded": c.short_parts_discarded,
            "samples_discarded_at_gaps": c.samples_discarded_at_gaps,
            "pairing": "exact stamp" if self.pair_by_stamp else "latest value",
            "unpaired_dropped": c.unpaired_dropped,
            "outside_episode": c.outside_episode,
            "queue_dropped": c.queue_dropped,
            "writer_queue": self.writer.queued_steps,
            "clipped_actions": c.clipped_actions,
            "stale_streams": self.stale_streams(now),
            "received": {n: s.count for n, s in self.latest.items()},
            "lost_messages": {n: s.lost for n, s in self.latest.items() if s.lost},
            "malformed": {n: s.malformed for n, s in self.latest.items()},
            "last_malformed": {n: s.last_problem for n, s in self.latest.items()
                               if s.last_problem},
            "write_latency_mean_ms": 1e3 * c.latency_sum_s / c.latency_count if c.latency_count
            else None,
            "write_latency_max_ms": 1e3 * c.latency_max_s if c.latency_count else None,
            "writer_error": self.writer.error,
        }

    # ----- exact pairing by stamp -----
    def _on_stamped(self, stream: str, values: dict, stamp: float, now: float) -> None:
        if stream == self.sample_on:
            self._pending.append((stamp, values))
            if len(self._pending) > STATE_HISTORY:  # states stopped: bounded wait
                self._pending.popleft()
                self.counters.unpaired_dropped += 1
                self._losses += 1
        elif stream in self._history:
            self._history[stream].append((stamp, values))
        elif stream == self._reward_stream:
            if self.state != IDLE:
                self._rewards.append((values["reward"], stamp))
                self._reward_samples()
            return
        else:
            return
        self._pair(now)

    def _pair(self, now: float) -> None:
        """Pair waiting applied commands (in stamp order) with the states of their stamps."""
        while self._pending:
            stamp, action = self._pending[0]
            if action is LOST:  # reports lost just before this stamp
                self._pending.popleft()
                self._losses += 1
                continue
            if "action" not in action:  # end report: the episode ended at this state
                self._pending.popleft()
                self._resolved_stamp = stamp
                self._on_end_report(stamp)
                continue
            states, waiting, gone = {}, False, False
            for name, history in self._history.items():
                match = next((v for st, v in reversed(history) if st == stamp), None)
                if match is not None:
                    states[name] = match
                elif history and history[-1][0] > stamp:  # states arrive in stamp order
                    gone = True
                else:
                    waiting = True
            if waiting and not gone:
                break
            self._pending.popleft()
            self._resolved_stamp = stamp
            if waiting or gone:
                self.counters.unpaired_dropped += 1
            if self.state == IDLE:
                continue
            if not self._bounds[0] < stamp < self._bounds[1]:
                self.counters.outside_episode += 1
                continue
            self._episode_reports += 1
            if waiting or gone:
                self._losses += 1
            if (waiting or gone or not self._sample(now, paired=(stamp, states, action))) \
                    and self._match_rewards:
                # The sim published this step's reward too: it must not go to the next sample.
                self._unrewarded.append(None)
                self._reward_samples()
        if self.state == CLOSING and self._closed():
            self._finish()

    def _on_end_report(self, stamp: float) -> None:
        start, end = self._bounds
        if self.state == IDLE or not start < stamp < end:
            return
        if self._episode_reports:
            self._bounds = (start, stamp)  # this episode's final state
        else:  # the previous episode's end, reported after this episode was started
            self._bounds = (stamp, end)

    def _reward_samples(self) -> None:
        while self._rewards and self._unrewarded:
            step, reward = self._unrewarded.popleft(), self._rewards.popleft()
            if step is not None:  # None: a step not taken, whose reward is skipped
                self._complete(self._with_reward(step, reward))
        if self.state == CLOSING and self._closed():
            self._finish()

    def _closed(self) -> bool:
        """Exact pairing, CLOSING: the end is known, every state before it is paired (or its
        command dropped) and every sample rewarded."""
        start, end = self._bounds
        if end == math.inf:
            return False
        waiting = any(start < st < end and st > self._resolved_stamp
                      for history in self._history.values() for st, _ in history)
        return not waiting and not (self._match_rewards and self._unrewarded)

    def _newest_state_stamp(self) -> float:
        return min((h[-1][0] if h else -math.inf) for h in self._history.values())

    # ----- sampling -----
    def _sample(self, now: float, paired: tuple | None = None) -> bool:
        """One step from the latest values; with `paired` = (stamp, {stream: values}, action),
        from those states and applied command (exact pairing) and the latest other values.
        False when no step was taken."""
        stale = self.stale_streams(now, required_only=True)
        if paired is not None:  # the paired streams are exact, however late they came
            stale = [name for name in stale if name not in paired[1] and name != self.sample_on]
        if stale:
            self._losses += 1
            self.counters.stale_skipped += 1
            for name in stale:
                self.latest[name].stale_skips += 1
            return False
        if paired is None and self._reset_time is not None and any(
                self.latest[s].received < self._reset_time for s in self._required_observations):
            self.counters.pre_reset_skipped += 1
            return False
        values: dict[str, np.ndarray] = {}
        step: dict[str, np.ndarray] = {}
        for s in self._value_streams:
            latest = self.latest[s.name]
            values.update(latest.values if latest.values is not None else self._blank[s.name])
            step[f"stamp/{s.name}"] = np.float64(latest.stamp)
        if paired is not None:
            stamp, states, action = paired
            for name in states:
                values.update(states[name])
                step[f"stamp/{name}"] = np.float64(stamp)
            values.update(action)
            step[f"stamp/{self.sample_on}"] = np.float64(stamp)
        action = values["action"]
        clipped = np.clip(action, self.spec.action.low, self.spec.action.high)
        if not np.array_equal(clipped, action):
            self.counters.clipped_actions += 1
        step["observation"] = self.spec.observation_vector(values)
        step["action"] = clipped.astype(np.float32)
        step["terminal"] = np.bool_(False)
        step["timestamp"] = np.float64(now)
        step[LOSS_MARK] = self._losses
        for image in self.spec.images:
            step[image.key] = values[image.key]
        if self._reward_stream is None:  # the dataset has no reward key
            self._complete(step)
            return True
        if not self._match_rewards and self._unrewarded:  # timer: reward = latest at next sample
            self._complete(self._with_reward(self._unrewarded.popleft()))
        self._unrewarded.append(step)
        if self.pair_by_stamp:
            self._reward_samples()
        return True

    def _with_reward(self, step: dict, reward: tuple | None = None) -> dict:
        """The step with `reward` = (value, stamp), or the latest reward."""
        if reward is None:
            latest = self.latest[self._reward_stream]
            reward = (latest.values["reward"] if latest.values else 0.0, latest.stamp)
        step["reward"] = np.float32(reward[0])
        step[f"stamp/{self._reward_stream}"] = np.float64(reward[1])
        return step

    def _complete(self, step: dict) -> None:
        if self._last is not None:
            self._write(self._last)
        self._last = step

    def _write(self, step: dict) -> None:
        """Hand a step to the writer, after splitting or cutting the episode if it does not
        follow the last step written (see the module doc)."""
        losses = step.pop(LOSS_MARK)
        if not self._cut and not self.writer.has_room():
            self.counters.queue_dropped += 1
            self._write_lost = True
            return
        clock = float(step[self._clock_key])
        if self._episode_clock is not None and (
                self._write_lost or losses != self._written_losses
                or not contiguous(clock - self._episode_clock, self._max_step)):
            self._at_gap(clock - self._episode_clock)
        if self._cut:
            self.counters.samples_discarded_at_gaps += 1
            return
        self.writer.add(step)
        self.episode_steps += 1
        self.counters.samples += 1
        self._episode_clock, self._written_losses, self._write_lost = clock, losses, False

    def _at_gap(self, clock_step: float) -> None:
        """The steps written so far become an episode of their own; the episode goes on as a
        new one, or, when rewards are matched in order, its rest is discarded."""
        self.counters.gaps += 1
        self.counters.gap_samples_missing += missing_samples(clock_step, self.period)
        what = f", the part before a gap ({self._clock_key} steps {clock_step:+.3f} s)"
        if self._match_rewards:  # rewards carry no stamp: after lost messages, which is whose?
            self._cut_at(what)
            self._cut = True
        else:
            self.counters.episodes_split_at_gaps += 1
            self._end_part(what)
            self._write_lost = False
            self.writer.begin(self.source, time.time())

    def _cut_at(self, what: str) -> None:
        self.counters.episodes_cut_at_gaps += 1
        self._end_part(what)

    def _end_part(self, what: str) -> None:
        """Commit the steps written so far, or discard them when too short."""
        if self.episode_steps >= self.min_part_steps:
            self._hand_commit(None, what)
        else:
            self.writer.discard()
            self.counters.short_parts_discarded += 1
            self.counters.samples_discarded_at_gaps += self.episode_steps
            self.episode_steps = 0
        self._episode_clock = None

    def _blank_values(self, stream) -> dict[str, np.ndarray]:
        """Values written for an optional stream that never delivered (its stamp is 0)."""
        spec = self.spec
        if stream.role == "observation":
            return {p.name: np.zeros(p.size) for p in spec.observation if p.topic == stream.topic}
        if stream.role == "image":
            return {i.key: np.zeros(i.shape, np.uint8) for i in spec.images
                    if i.topic == stream.topic}
        return {stream.role: np.zeros(spec.act_dim) if stream.role == "action" else 0.0}

    def _age(self, name: str, now: float) -> str:
        received = self.latest[name].received
        return "never received" if received == -math.inf else f"last {now - received:.2f} s ago"
