"""Running an exported policy on a robot, without ROS: the ONNX session, the model's metadata
checked against the robot, and the safety logic between the policy and the actuators.

    policy = OnnxPolicy("policy.onnx", provider="auto")      # logs the provider in use
    check_compatible(policy.metadata, spec.robot_description(), "config/robot_cheetah_sim.yaml")
    runner = PolicyRunner(policy, spec.action.low, spec.action.high,
                          SafetyConfig(spec.action.command_interface, stale_timeout_s=0.1),
                          position_index=spec.commanded_positions())   # position interface only
    runner.observe(obs)            # on every observation
    command = runner.step()        # once per control tick: an action within bounds

Every tick returns an action: the policy's (clipped, optionally rate limited) or the safe action
when the controller is disabled or e-stopped, the observation is missing, stale or not finite,
or the policy output is not finite. The safe action stops the robot for its command interface:
position -> the joints' positions measured at the moment of the stop, held for the whole stop;
velocity and effort -> zero (clipped to the bounds). Holding the last command would not stop a
velocity or effort robot: it keeps driving it.
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from robot_stack.action_space import ActionSpace
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.spec import COMMAND_INTERFACES, POSITION, check_positive

log = logging.getLogger(__name__)

# The exported graph's interface (robot_stack/deploy/export.py writes it).
INPUT_NAME = "observation"
OUTPUT_NAME = "action"
FORMAT_VERSION = 1

TENSORRT, CUDA, CPU = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                       "CPUExecutionProvider")
ORT_DEFAULT_LOG_SEVERITY = 2  # warnings and above
# Reasons for a safe action, as counted in PolicyRunner.safe_actions.
DISABLED, ESTOP, NO_OBSERVATION, STALE, BAD_OBSERVATION, BAD_OUTPUT = (
    "disabled", "estop", "no_observation", "stale_observation", "bad_observation", "bad_output")


# ----- the model and its metadata -----

@dataclass(frozen=True)
class PolicyMetadata:
    task: str
    obs_dim: int
    act_dim: int
    observation_layout: list
    joint_names: list
    action_low: np.ndarray
    action_high: np.ndarray
    control_rate_hz: float
    training_run: str
    dataset: str
    dataset_fingerprint: str
    command_interface: str | None  # None in models exported before it was recorded
    raw: dict  # every metadata entry, decoded

    @classmethod
    def from_props(cls, props: dict[str, str], origin: str) -> "PolicyMetadata":
        try:
            raw = {k: json.loads(v) for k, v in props.items()}
        except json.JSONDecodeError as e:
            raise ConfigError(f"{origin}: metadata is not JSON-encoded ({e})") from None
        if raw.get("robot_stack_format") != FORMAT_VERSION:
            raise ConfigError(f"{origin} is not a robot_stack policy export (metadata format "
                              f"{raw.get('robot_stack_format')!r}, expected {FORMAT_VERSION}); "
                              "export it with `robot-stack export`")
        try:
            metadata = cls(raw["task"], int(raw["obs_dim"]), int(raw["act_dim"]),
                           list(raw["observation_layout"]), list(raw["joint_names"]),
                           np.asarray(raw["action_low"], np.float64).reshape(-1),
                           np.asarray(raw["action_high"], np.float64).reshape(-1),
                           float(raw["control_rate_hz"]), raw["training_run"], raw["dataset"],
                           raw["dataset_fingerprint"], raw.get("command_interface"), raw)
            layout_size = sum(int(part["size"]) for part in metadata.observation_layout)
        except KeyError as e:
            raise ConfigError(f"{origin}: metadata lacks {e}") from None
        except (TypeError, ValueError) as e:  # a value of the wrong kind: "x" for obs_dim
            raise ConfigError(f"{origin}: malformed metadata ({e})") from None
        # The runtime sizes its buffers, bounds and checks from these: they must agree with
        # each other before they are compared with the graph and the robot.
        try:
            space = ActionSpace(metadata.action_low, metadata.action_high)
        except DatasetError as e:
            raise ConfigError(f"{origin}: metadata {e}") from None
        if space.low.size != metadata.act_dim or layout_size != metadata.obs_dim:
            raise ConfigError(f"{origin}: metadata disagrees with itself: act_dim "
                              f"{metadata.act_dim} with {space.low.size} action bounds, obs_dim "
                              f"{metadata.obs_dim} with an observation layout of {layout_size}")
        return metadata


def check_compatible(metadata: PolicyMetadata, robot: dict, robot_origin: str) -> None:
    """Raises one ConfigError listing every difference between the model and the robot
    description (RobotSpec.robot_description() or a sim task's) that would make the policy see
    a different observation or drive different actuators."""
    problems = []
    layout = robot["observation_layout"]
    obs_dim = sum(int(p["size"]) for p in layout)
    if obs_dim != metadata.obs_dim:
        problems.append(f"observation size: model {metadata.obs_dim}, robot {obs_dim}")
    if [(p["name"], int(p["size"])) for p in layout] != [
            (p["name"], int(p["size"])) for p in metadata.observation_layout]:
        problems.append("observation layout: model " + _layout_text(metadata.observation_layout)
                        + ", robot " + _layout_text(layout))
    joints = list(robot.get("joint_names", []))
    if metadata.joint_names and joints and joints != list(metadata.joint_names):
        problems.append(f"joint names: model {metadata.joint_names}, robot {joints}")
    low, high = (np.asarray(robot[k], np.float64) for k in ("action_low", "action_high"))
    if low.shape != (metadata.act_dim,):
        problems.append(f"action size: model {metadata.act_dim}, robot {low.size}")
    elif not (np.allclose(low, metadata.action_low) and np.allclose(high, metadata.action_high)):
        problems.append(f"action bounds: model low {metadata.action_low.tolist()} high "
                        f"{metadata.action_high.tolist()}, robot low {low.tolist()} high "
                        f"{high.tolist()}")
    interface = robot.get("command_interface")
    if metadata.command_interface and interface and metadata.command_interface != interface:
        problems.append(f"command interface: model {metadata.command_interface}, robot {interface}")
    if problems:
        raise ConfigError(f"policy (task {metadata.task}, trained on {metadata.dataset}) does not "
                          f"match {robot_origin}: " + "; ".join(problems))


def _layout_text(layout: list) -> str:
    return "[" + ", ".join(f"{p['name']}({p['size']})" for p in layout) + "]"


# Each choice's providers, best first. tensorrt only on request: engine builds take minutes.
PROVIDER_ORDER = {"auto": [CUDA, CPU], "tensorrt": [TENSORRT, CUDA, CPU], "cuda": [CUDA, CPU],
                  "cpu": [CPU]}
PROVIDERS = tuple(PROVIDER_ORDER)


def choose_providers(provider: str, available: list[str]) -> list[str]:
    """The execution providers to ask for, best first, among those installed
    (PROVIDER_ORDER). onnxruntime falls back along the list when a provider fails to load.
    """
    if provider not in PROVIDERS:
        raise ConfigError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    return [p for p in PROVIDER_ORDER[provider] if p in available] or [CPU]


class OnnxPolicy:
    """An exported policy: float observation(s) -> action(s) in robot units, float64."""

    def __init__(self, path: str | Path, *, provider: str = "auto", warmup: int = 20,
                 threads: int = 1):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"policy file {path} does not exist")
        options = ort.SessionOptions()
        # One small MLP per tick: a thread pool only adds wake-up latency and jitter.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        requested = choose_providers(provider, ort.get_available_providers())
        # onnxruntime logs a multi-line error when a provider's libraries are missing (CUDA
        # without the CUDA libraries); the fallback is reported below as one warning instead.
        ort.set_default_logger_severity(4)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=requested)
        except Exception as e:  # onnxruntime raises its own untyped errors for bad files
            # its messages can run over several lines; the first says what is wrong
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise ConfigError(f"cannot load policy {path}: {reason}") from None
        finally:
            ort.set_default_logger_severity(ORT_DEFAULT_LOG_SEVERITY)
        self.provider = self.session.get_providers()[0]
        # Not the provider wanted first: its libraries or device are missing, or this
        # onnxruntime build lacks it altogether (plain onnxruntime has no CUDA provider).
        # Reported by the caller (the policy node warns, eval prints the provider), not logged
        # as a warning here: a model refused a moment later would answer in two lines.
        self.fell_back = self.provider != PROVIDER_ORDER[provider][0]
        log.info("policy %s runs on %s (asked for %s; this onnxruntime has %s)", path,
                 self.provider, provider, ", ".join(ort.get_available_providers()))
        self.metadata = PolicyMetadata.from_props(
            self.session.get_modelmeta().custom_metadata_map, str(path))
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [i.name for i in inputs] != [INPUT_NAME] or [o.name for o in outputs] != [OUTPUT_NAME]:
            raise ConfigError(f"{path}: expected input {INPUT_NAME!r} and output "
                              f"{OUTPUT_NAME!r}, got {[i.name for i in inputs]} -> "
                              f"{[o.name for o in outputs]}")
        # Checked here, before the first run: onnxruntime would fail it with a multi-line
        # error about the input or output buffer.
        for what, node, size in (("obs_dim", inputs[0], self.metadata.obs_dim),
                                 ("act_dim", outputs[0], self.metadata.act_dim)):
            if isinstance(node.shape[-1], int) and node.shape[-1] != size:
                raise ConfigError(f"{path}: metadata {what} {size} disagrees with the graph's "
                                  f"{node.name} of size {node.shape[-1]}")
        # A tick's single observation runs through an I/O binding with preallocated buffers,
        # which saves the per-call allocations of session.run (~15% of a call on a cold
        # core). The CPU provider reads the bound input buffer in place, so it is bound once
        # and refilled; GPU providers copy the input to the device at bind time, so it is
        # bound again on every call.
        self._binding = self.session.io_binding()
        self._observation = np.zeros((1, self.metadata.obs_dim), np.float32)
        self._action = np.zeros((1, self.metadata.act_dim), np.float32)
        self._rebind = self.provider != CPU
        self._binding.bind_cpu_input(INPUT_NAME, self._observation)
        self._binding.bind_output(OUTPUT_NAME, "cpu", 0, np.float32, list(self._action.shape),
                                  self._action.ctypes.data)
        for _ in range(warmup):  # first runs allocate and (on GPU EPs) build kernels
            self(np.zeros(self.metadata.obs_dim, np.float32))

    def __call__(self, observation: np.ndarray) -> np.ndarray:
        """(obs_dim,) -> (act_dim,) or (B, obs_dim) -> (B, act_dim)."""
        obs = np.asarray(observation)
        if obs.shape[-1] != self.metadata.obs_dim:
            raise ValueError(f"observation has {obs.shape[-1]} values, the policy takes "
                             f"{self.metadata.obs_dim}")
        if obs.ndim == 1:
            self._observation[0] = obs  # cast to float32 on the way
            if self._rebind:
                self._binding.bind_cpu_input(INPUT_NAME, self._observation)
            self.session.run_with_iobinding(self._binding)
            return self._action[0].astype(np.float64)
        batch = obs.astype(np.float32, copy=False)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0].astype(np.float64)


# ----- safety between the policy and the actuators -----

def all_finite(values: np.ndarray) -> bool:
    """np.isfinite(values).all(), in one BLAS call when it holds (a third of the time, in a
    control tick): a vector's dot product with itself is finite exactly when every value is,
    unless a square overflows (|x| > 1e154 in float64, 1e19 in float32), which the
    elementwise check then settles."""
    return ((values.ndim == 1 and math.isfinite(values.dot(values)))
            or bool(np.isfinite(values).all()))


@dataclass
class SafetyConfig:
    command_interface: str | None    # position | velocity | effort: decides the safe action
    stale_timeout_s: float = 0.1     # an observation older than this gives the safe action
    max_delta: float | None = None   # largest change of any command value per tick, or None

    def validate(self) -> None:
        if self.command_interface not in COMMAND_INTERFACES:
            raise ConfigError(f"the robot spec's action.command_interface must be one of "
                              f"{COMMAND_INTERFACES}, got {self.command_interface!r}: the safe "
                              "action that stops the robot depends on it")
        check_positive("stale_timeout_s", self.stale_timeout_s)
        if self.max_delta is not None:
            check_positive("max_delta", self.max_delta)


class LatencyStats:
    """Durations of the last `window` events, summarised as p50/p99/max in milliseconds.

    The node's status callback summarises these while its control thread waits for the GIL,
    so summary() is kept short: a small window (2 s at 1 kHz) and one partial sort, ~15 us
    where np.percentile over 10,000 values held the GIL for ~280 us.
    """

    def __init__(self, window: int = 2_000):
        self._values = np.zeros(window)
        self.count = 0

    def add(self, seconds: float) -> None:
        self._values[self.count % len(self._values)] = seconds
        self.count += 1

    def summary(self) -> dict:
        n = min(self.count, len(self._values))
        if not n:
            return {"count": 0}
        p50, p99, largest = _percentiles(self._values[:n] * 1e3, (50, 99, 100))
        return {"count": self.count, "p50_ms": round(p50, 4),
                "p99_ms": round(p99, 4), "max_ms": round(largest, 4)}


def _percentiles(values: np.ndarray, qs) -> list[float]:
    """np.percentile(values, qs) (linear interpolation) from one partial sort of the order
    statistics it needs."""
    n = len(values)
    positions = [q / 100 * (n - 1) for q in qs]
    below = [int(pos) for pos in positions]
    above = [min(i + 1, n - 1) for i in below]
    ordered = np.partition(values, sorted(set(below + above)))
    return [float(ordered[i] + (pos - i) * (ordered[j] - ordered[i]))
            for pos, i, j in zip(positions, below, above)]


class PolicyRunner:
    """Turns observations into commands each tick, falling back to the safe action.

    `position_index` (position interface only): the observation indices of the measured
    positions of the commanded joints, in action order (RobotSpec.commanded_positions()).
    Not thread-safe by itself: the caller serialises observe/step/enable/estop (one lock).
    """

    def __init__(self, policy: Callable[[np.ndarray], np.ndarray], action_low, action_high,
                 config: SafetyConfig, position_index=None,
                 clock: Callable[[], float] = time.monotonic):
        config.validate()
        self.policy, self.config, self.clock = policy, config, clock
        self.low = np.asarray(action_low, np.float64)
        self.high = np.asarray(action_high, np.float64)
        self.holds_position = config.command_interface == POSITION
        if self.holds_position:
            if position_index is None or len(position_index) != len(self.low):
                raise ConfigError("a position interface needs the observation index of each "
                                  "commanded joint's measured position")
            self.position_index = np.asarray(position_index, np.intp)
        self.zero = np.clip(np.zeros_like(self.low), self.low, self.high)
        # The command the actuators were last given; None while a position robot was never
        # commanded (zero is a position there, not a stop).
        self.last_command: np.ndarray | None = None if self.holds_position else self.zero.copy()
        self.stop_command: np.ndarray | None = None  # the safe action of the current stop
        self.enabled = True
        self.estopped = False
        self.observation: np.ndarray | None = None
        self.observation_finite = False
        self.measured: np.ndarray | None = None  # the newest finite observation
        self.observation_time: float | None = None
        self.observation_problem: str | None = None
        self.ticks = 0
        self.policy_actions = 0
        self.clipped = 0
        self.rate_limited = 0
        self.safe_actions: Counter = Counter()
        self.last_reason: str | None = NO_OBSERVATION
        self.inference = LatencyStats()
        self.loop = LatencyStats()

    # ----- inputs -----
    def observe(self, observation: np.ndarray | None, problem: str | None = None,
                now: float | None = None) -> None:
        """The newest observation, or `problem` when the message could not make one."""
        self.observation_time = self.clock() if now is None else now
        self.observation = None if observation is None else np.asarray(observation)
        self.observation_finite = self.observation is not None and all_finite(self.observation)
        if self.observation_finite:
            self.measured = self.observation
        self.observation_problem = problem

    def set_enabled(self, enabled: bool) -> str:
        """Enabling clears a latched e-stop: it is the explicit operator action that may."""
        if enabled and self.estopped:
            self.estopped = False
            self.enabled = True
            return "e-stop cleared, enabled"
        self.enabled = bool(enabled)
        return "enabled" if enabled else "disabled"

    def estop(self) -> None:
        """Latches until reset_estop() or set_enabled(True)."""
        self.estopped = True

    def reset_estop(self) -> bool:
        """Clears the latch; returns whether one was set. Does not change enabled."""
        was, self.estopped = self.estopped, False
        return was

    # ----- the tick -----
    def step(self, now: float | None = None) -> np.ndarray | None:
        """The command for this tick (float64, within bounds). Never raises for bad data.
        None only for a position interface that has not measured its joints yet: there is
        no command that stops it then, so none is sent."""
        now = self.clock() if now is None else now
        self.ticks += 1
        reason = self._blocked(now)
        if reason is None:
            start = time.perf_counter()
            raw = np.asarray(self.policy(self.observation), np.float64)
            self.inference.add(time.perf_counter() - start)
            if raw.shape != self.low.shape or not all_finite(raw):
                reason = BAD_OUTPUT
        if reason is not None:
            return self._safe(reason)
        # np.minimum/np.maximum: np.clip's Python wrapper costs twice as much, per tick.
        command = np.minimum(np.maximum(raw, self.low), self.high)
        if (command != raw).any():
            self.clipped += 1
        if self.config.max_delta is not None:
            # A position robot never commanded before is where it was measured.
            previous = self.last_command if self.last_command is not None else self._held()
            limited = np.minimum(np.maximum(command, previous - self.config.max_delta),
                                 previous + self.config.max_delta)
            if (limited != command).any():
                self.rate_limited += 1
            command = limited
        self.policy_actions += 1
        self.last_reason = None
        self.last_command = command
        return command

    def _blocked(self, now: float) -> str | None:
        if self.estopped:
            return ESTOP
        if not self.enabled:
            return DISABLED
        if self.observation_time is None:
            return NO_OBSERVATION
        if now - self.observation_time > self.config.stale_timeout_s:
            return STALE
        if not self.observation_finite:
            return BAD_OBSERVATION
        return None

    def _safe(self, reason: str) -> np.ndarray | None:
        # Not rate limited: a stop must take effect within this tick. Its command is fixed
        # when the stop begins (a position robot holds where it was then, not where later
        # observations say it drifted to), or, for a position robot, once it is measured.
        self.safe_actions[reason] += 1
        if self.last_reason is None or self.stop_command is None:
            self.stop_command = self._held() if self.holds_position else self.zero
        self.last_reason = reason
        if self.stop_command is None:
            return None
        self.last_command = self.stop_command
        return self.stop_command.copy()

    def _held(self) -> np.ndarray | None:
        """The commanded joints' newest measured positions within the bounds, or None."""
        if self.measured is None:
            return None
        positions = np.asarray(self.measured[self.position_index], np.float64)
        return np.minimum(np.maximum(positions, self.low), self.high)

    def status(self) -> dict:
        return {
            "enabled": self.enabled,
            "estop": self.estopped,
            "state": ("estop" if self.estopped else "disabled" if not self.enabled
                      else "safe:" + self.last_reason if self.last_reason else "running"),
            "ticks": self.ticks,
            "policy_actions": self.policy_actions,
            "safe_actions": dict(self.safe_actions),
            "safe_actions_total": sum(self.safe_actions.values()),
            "observation_problem": self.observation_problem,
            "clipped": self.clipped,
            "rate_limited": self.rate_limited,
            "inference": self.inference.summary(),
            "loop": self.loop.summary(),
            "command_interface": self.config.command_interface,
            "command": None if self.last_command is None else self.last_command.tolist(),
        }


class TickSchedule:
    """Control-tick deadlines every `period` seconds from `start`.

    A tick that runs a whole period or more after its deadline stands in for every deadline
    that passed meanwhile: those ticks count as missed and are skipped, not run late in a
    burst. `lateness` keeps how long after its deadline each tick ran.
    """

    def __init__(self, period: float, start: float):
        self.period = period
        self.deadline = start + period
        self.missed = 0
        self.lateness = LatencyStats()

    def wait_time(self, now: float) -> float:
        """Seconds until the next deadline (0 when it has passed)."""
        return max(0.0, self.deadline - now)

    def due(self, now: float) -> bool:
        return now >= self.deadline

    def tick(self, now: float) -> None:
        """Records a due tick running at `now` and moves to the next deadline."""
        skipped = int((now - self.deadline) // self.period)
        self.missed += skipped
        self.deadline += skipped * self.period
        self.lateness.add(now - self.deadline)
        self.deadline += self.period
