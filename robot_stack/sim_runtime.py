"""The sim node's logic without ROS: command checks, episode ticks, real-time pacing.

One tick of the node is one control step of the task, or one reset. Sim time advances by the
task's control period on every tick that steps or resets, so it is monotonic across episodes
and does not depend on how fast the host runs.

Lockstep (synchronous simulation, as Gazebo's lockstep or CARLA's synchronous mode): every
published state is answered by one command before the next tick. The node waits for the first
valid command received after it published a tick (`awaiting_answer`), and the step applies
exactly that command, so a controller that answers each state drives the sim with exact
(s_t, a_t) pairs however loaded the host is. Without an answer within the node's timeout, the
tick goes ahead with the held command and `lockstep_timeouts` counts it. The answer to an
episode's last state is awaited too (and then dropped by the reset): otherwise it would arrive
after the reset and be applied to the next episode's first state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from robot_stack.errors import ConfigError


class CommandGate:
    """Validates incoming commands and holds the last valid one.

    Wrong length or non-finite values: rejected (the held command stays). Out of bounds:
    clipped to the bounds and used. Commands that stop arriving: the last valid one is held.
    """

    def __init__(self, low, high):
        self.low = np.asarray(low, dtype=np.float64)
        self.high = np.asarray(high, dtype=np.float64)
        self.command = np.zeros_like(self.low)
        self.accepted = 0
        self.clipped = 0
        self.rejected = 0
        self.received_at: float | None = None  # sim time of the last valid command

    def submit(self, values, now: float) -> str | None:
        """Takes one command; returns why it was rejected, or None if it was used."""
        command = np.asarray(values, dtype=np.float64)
        if command.shape != self.low.shape:
            self.rejected += 1
            return f"command has {command.size} values, the action has {self.low.size}"
        if not np.all(np.isfinite(command)):
            self.rejected += 1
            return "command contains NaN or inf"
        clipped = np.clip(command, self.low, self.high)
        if not np.array_equal(clipped, command):
            self.clipped += 1
        self.command = clipped
        self.accepted += 1
        self.received_at = now
        return None

    def clear(self) -> None:
        """Back to a zero command, as after a reset: nothing from the last episode carries over."""
        self.command = np.zeros_like(self.low)
        self.received_at = None

    def age(self, now: float) -> float | None:
        return None if self.received_at is None else now - self.received_at


@dataclass
class Tick:
    """What one tick produced, in publishing order: applied command, state, reward, events."""
    qpos: np.ndarray
    qvel: np.ndarray
    sim_time: float
    reward: float | None = None  # None on a reset tick
    applied: np.ndarray | None = None  # the command the step applied (clipped/held); None on reset
    events: list[str] = field(default_factory=list)


class SimRuntime:
    """Steps a sim/ task with the gated command; handles resets and the end of episodes.

    Each episode starts with a reset tick (event "reset", the initial state, no reward). A step
    that ends the episode publishes "terminal" or "truncated"; with auto_reset the next tick
    resets, otherwise the sim idles (publishes nothing) until reset is requested.
    """

    def __init__(self, task, *, seed: int = 0, auto_reset: bool = True,
                 command_timeout: float = 0.5, max_episode_steps: int = 0,
                 lockstep: bool = False):
        description = task.robot_description()
        if not 0 <= max_episode_steps == int(max_episode_steps):
            raise ConfigError(f"max_episode_steps must be an integer >= 0 (0 = the task's "
                              f"{task.max_steps}), got {max_episode_steps}")
        if not 0 <= seed == int(seed):  # a seed parameter set past the CLI (ros2 run -p seed:=-1)
            raise ConfigError(f"seed must be a whole number >= 0, got {seed}")
        self.task = task
        self.gate = CommandGate(description["action_low"], description["action_high"])
        self.seed = int(seed)
        self.auto_reset = bool(auto_reset)
        self.command_timeout = float(command_timeout)
        self.max_episode_steps = min(int(max_episode_steps) or task.max_steps, task.max_steps)
        self.lockstep = bool(lockstep)
        self.awaiting_answer = False  # lockstep: the last published state is not answered yet
        self.lockstep_timeouts = 0
        self._answer: np.ndarray | None = None  # lockstep: the command the next step applies
        self.ticks = 0
        self.steps = 0
        self.episodes = 0
        self.episode_step = 0
        self.episode_return = 0.0
        self.episode_over = False
        self.reset_requested = True  # the first tick starts the first episode

    @property
    def sim_time(self) -> float:
        return self.ticks * self.task.control_dt

    def submit_command(self, values) -> str | None:
        problem = self.gate.submit(values, self.sim_time)
        if problem is None and self.awaiting_answer:
            # the first answer counts; later commands are only held (as without lockstep)
            self._answer, self.awaiting_answer = self.gate.command.copy(), False
        return problem

    def answer_timed_out(self) -> None:
        """Lockstep: no command answered the last state in time; the next tick holds."""
        self.awaiting_answer = False
        self.lockstep_timeouts += 1

    def holding(self) -> bool:
        """True when commands have stopped arriving and the last valid one is being held."""
        age = self.gate.age(self.sim_time)
        return age is not None and age > self.command_timeout

    def tick(self) -> Tick | None:
        """Advances one control period; None when idling after the end of an episode."""
        if self.reset_requested or (self.episode_over and self.auto_reset):
            return self._reset()
        if self.episode_over:
            return None
        command = (self.gate.command if self._answer is None else self._answer).copy()
        _, reward, terminal, truncated, _ = self.task.step(command)
        self.ticks += 1
        self.steps += 1
        self.episode_step += 1
        self.episode_return += reward
        truncated = truncated or self.episode_step >= self.max_episode_steps
        events = ["terminal"] if terminal else ["truncated"] if truncated else []
        self.episode_over = bool(terminal or truncated)
        return self._published(Tick(*self.task.qpos_qvel(), self.sim_time,
                                    reward=float(reward), applied=command, events=events))

    def _reset(self) -> Tick:
        # seed + episode index: a fixed seed gives a reproducible sequence of distinct episodes.
        self.task.reset(seed=self.seed + self.episodes)
        self.gate.clear()
        self.ticks += 1
        self.episodes += 1
        self.episode_step = 0
        self.episode_return = 0.0
        self.episode_over = False
        self.reset_requested = False
        return self._published(Tick(*self.task.qpos_qvel(), self.sim_time, events=["reset"]))

    def _published(self, tick: Tick) -> Tick:
        self._answer = None
        self.awaiting_answer = self.lockstep
        return tick

    def status(self) -> dict:
        age = self.gate.age(self.sim_time)
        return {
            "task": self.task.name,
            "sim_time": round(self.sim_time, 9),
            "steps": self.steps,
            "episodes": self.episodes,
            "episode_step": self.episode_step,
            "episode_return": self.episode_return,
            "episode_over": self.episode_over,
            "commands_accepted": self.gate.accepted,
            "clipped": self.gate.clipped,
            "rejected": self.gate.rejected,
            "command_age": None if age is None else round(age, 9),
            "holding": self.holding(),
            "lockstep": self.lockstep,
            "lockstep_timeouts": self.lockstep_timeouts,
            "command": self.gate.command.tolist(),
        }


class Pacer:
    """Drift-free pacing: tick k is due at start + k * period (not 'period after the last one').

    period 0 means as fast as possible. A tick more than ``max_lag`` periods late re-anchors the
    schedule (counted as an overrun) instead of bursting ticks to catch up.
    """

    def __init__(self, period: float, max_lag: int = 5, clock=time.monotonic, sleep=time.sleep):
        if period < 0:
            raise ConfigError(f"tick period must be >= 0, got {period}")
        self.period = float(period)
        self.max_lag = max_lag
        self.overruns = 0
        self._clock, self._sleep = clock, sleep
        self._start = clock()
        self._k = 0

    def wait(self) -> None:
        """Sleeps until the next tick is due."""
        if self.period == 0:
            return
        self._k += 1
        due = self._start + self._k * self.period
        now = self._clock()
        if now - due > self.max_lag * self.period:
            self.overruns += 1
            self._start, self._k = now, 0
        elif due > now:
            self._sleep(due - now)


def tick_period(control_dt: float, realtime_factor: float) -> float:
    """Wall seconds per tick: control_dt / realtime_factor; 0 (as fast as possible) for factor 0."""
    if not realtime_factor >= 0:
        raise ConfigError("realtime_factor must be >= 0 (0 = as fast as possible), "
                          f"got {realtime_factor}")
    return 0.0 if realtime_factor == 0 else control_dt / realtime_factor
