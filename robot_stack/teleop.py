"""Teleoperation logic without ROS: keyboard key -> action state, joystick axes -> action.

Both sources produce an action vector within the robot's bounds and episode requests for the
recorder. The ROS node (ros_nodes/teleop_node.py) only feeds keys or sensor_msgs/Joy arrays in
and publishes what comes out.
"""
from __future__ import annotations

import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from robot_stack.errors import ConfigError

# Episode requests, each answered by one recorder service (see ros_nodes/teleop_node.py).
START = "start"
STOP_SUCCESS = "stop_success"
STOP_FAILURE = "stop_failure"
DISCARD = "discard"
EPISODE_REQUESTS = (START, STOP_SUCCESS, STOP_FAILURE, DISCARD)


def load_yaml_mapping(path: str | Path) -> dict:
    try:
        with open(path) as f:
            mapping = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read teleop mapping {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"teleop mapping {path} is not valid YAML: {exc}") from exc
    if not isinstance(mapping, dict):
        raise ConfigError(f"teleop mapping {path} must be a YAML mapping, "
                          f"got {type(mapping).__name__}")
    return mapping


def _bounds(low, high, act_dim: int) -> tuple[np.ndarray, np.ndarray]:
    low = np.broadcast_to(np.asarray(low, dtype=np.float64), (act_dim,)).copy()
    high = np.broadcast_to(np.asarray(high, dtype=np.float64), (act_dim,)).copy()
    if np.any(low > high):
        raise ConfigError(f"action bounds have low > high: low={low.tolist()}, high={high.tolist()}")
    return low, high


# ----- keyboard -----

@dataclass(frozen=True)
class KeyboardMapping:
    """Which key does what. ``increase[i]`` / ``decrease[i]`` move action dimension i by ``step``."""
    increase: str
    decrease: str
    step: float
    zero: str
    episode_keys: dict[str, str]  # key -> episode request

    @classmethod
    def from_dict(cls, raw: dict, source: str = "keyboard mapping") -> "KeyboardMapping":
        known = {"increase", "decrease", "step", "zero", *EPISODE_REQUESTS}
        unknown = set(raw) - known
        if unknown:
            raise ConfigError(f"{source}: unknown entries {sorted(unknown)}; "
                              f"known: {sorted(known)}")
        missing = known - set(raw)
        if missing:
            raise ConfigError(f"{source}: missing entries {sorted(missing)}")
        increase, decrease, zero = str(raw["increase"]), str(raw["decrease"]), str(raw["zero"])
        if len(increase) != len(decrease):
            raise ConfigError(f"{source}: 'increase' ({increase!r}) and 'decrease' ({decrease!r}) "
                              "need one key per action dimension each")
        step = float(raw["step"])
        if not step > 0:
            raise ConfigError(f"{source}: 'step' must be > 0, got {raw['step']!r}")
        episode_keys = {str(raw[request]): request for request in EPISODE_REQUESTS}
        if len(episode_keys) == len(EPISODE_REQUESTS) and any(len(k) != 1 for k in episode_keys):
            raise ConfigError(f"{source}: {', '.join(EPISODE_REQUESTS)} must be single keys")
        all_keys = [*increase, *decrease, *zero, *(str(raw[r]) for r in EPISODE_REQUESTS)]
        duplicates = sorted({k for k in all_keys if all_keys.count(k) > 1})
        if duplicates:
            raise ConfigError(f"{source}: keys used for more than one thing: {duplicates}")
        return cls(increase, decrease, step, zero, episode_keys)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "KeyboardMapping":
        return cls.from_dict(load_yaml_mapping(path), source=str(path))

    def help_text(self, act_dim: int) -> str:
        names = {v: k for k, v in self.episode_keys.items()}
        pairs = ", ".join(f"{self.increase[i]}/{self.decrease[i]}: action[{i}] +/-"
                          for i in range(act_dim))
        zero = " ".join("space" if k == " " else k for k in self.zero)
        return (f"{pairs}; {zero}: zero; {names[START]}: start episode; "
                f"{names[STOP_SUCCESS]}: stop (success); {names[STOP_FAILURE]}: stop (failure); "
                f"{names[DISCARD]}: discard episode; Ctrl-C: quit")


class KeyboardTeleop:
    """Key presses -> action held between presses (each key nudges one dimension by a step)."""

    def __init__(self, mapping: KeyboardMapping, act_dim: int, low, high):
        if act_dim > len(mapping.increase):
            raise ConfigError(f"keyboard mapping has keys for {len(mapping.increase)} action "
                              f"dimensions, the robot has {act_dim}")
        self.mapping = mapping
        self.low, self.high = _bounds(low, high, act_dim)
        self.action = np.zeros(act_dim)

    def press(self, key: str) -> str | None:
        """Applies one key; returns the episode request it makes, if any. Unknown keys do nothing."""
        m = self.mapping
        if key in m.episode_keys:
            return m.episode_keys[key]
        if key in m.zero:
            self.action[:] = 0.0
        elif key in m.increase[: len(self.action)]:
            i = m.increase.index(key)
            self.action[i] = min(self.action[i] + m.step, self.high[i])
        elif key in m.decrease[: len(self.action)]:
            i = m.decrease.index(key)
            self.action[i] = max(self.action[i] - m.step, self.low[i])
        # Repeated float steps drift (0.1 * 3 != 0.3); round so that going back to 0 gives 0.
        self.action[:] = np.round(self.action, 9)
        return None


# ----- joystick -----

@dataclass(frozen=True)
class AxisMapping:
    axis: int
    action: int
    scale: float = 1.0
    deadzone: float = 0.0
    invert: bool = False


@dataclass(frozen=True)
class JoyMapping:
    axes: tuple[AxisMapping, ...]
    buttons: dict[int, str] = field(default_factory=dict)  # button index -> episode request

    @classmethod
    def from_dict(cls, raw: dict, source: str = "joystick mapping") -> "JoyMapping":
        unknown = set(raw) - {"axes", "buttons"}
        if unknown:
            raise ConfigError(f"{source}: unknown entries {sorted(unknown)}; known: axes, buttons")
        if not isinstance(raw.get("axes"), list) or not raw["axes"]:
            raise ConfigError(f"{source}: 'axes' must be a non-empty list of "
                              "{axis, action, scale, deadzone, invert} entries")
        axes = []
        for n, entry in enumerate(raw["axes"]):
            if not isinstance(entry, dict):
                raise ConfigError(f"{source}: axes[{n}] must be a mapping, got {entry!r}")
            try:
                axis = AxisMapping(**entry)
            except TypeError as exc:
                raise ConfigError(f"{source}: axes[{n}]: {exc}") from exc
            if not (isinstance(axis.axis, int) and isinstance(axis.action, int)
                    and axis.axis >= 0 and axis.action >= 0):
                raise ConfigError(f"{source}: axes[{n}]: 'axis' and 'action' must be indices >= 0")
            if not 0.0 <= float(axis.deadzone) < 1.0:
                raise ConfigError(f"{source}: axes[{n}]: 'deadzone' must be in [0, 1)")
            axes.append(axis)
        targets = [a.action for a in axes]
        if len(set(targets)) != len(targets):
            raise ConfigError(f"{source}: an action index is mapped from more than one axis")
        buttons_raw = raw.get("buttons") or {}
        if not isinstance(buttons_raw, dict) or set(buttons_raw) - set(EPISODE_REQUESTS):
            raise ConfigError(f"{source}: 'buttons' maps {', '.join(EPISODE_REQUESTS)} to button "
                              f"indices, got {buttons_raw!r}")
        buttons = {int(index): request for request, index in buttons_raw.items()}
        if len(buttons) != len(buttons_raw):
            raise ConfigError(f"{source}: one button is mapped to more than one episode request")
        return cls(tuple(axes), buttons)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "JoyMapping":
        return cls.from_dict(load_yaml_mapping(path), source=str(path))


class JoyTeleop:
    """sensor_msgs/Joy arrays -> action (axes) and episode requests (button press edges)."""

    def __init__(self, mapping: JoyMapping, act_dim: int, low, high):
        too_high = [a.action for a in mapping.axes if a.action >= act_dim]
        if too_high:
            raise ConfigError(f"joystick mapping targets action indices {too_high}, the robot "
                              f"has {act_dim} action dimensions")
        self.mapping = mapping
        self.low, self.high = _bounds(low, high, act_dim)
        self.action = np.zeros(act_dim)
        self._pressed: set[int] = set()

    def update(self, axes, buttons) -> list[str]:
        """Applies one Joy message; returns the episode requests of newly pressed buttons."""
        action = np.zeros_like(self.action)
        for a in self.mapping.axes:
            value = float(axes[a.axis]) if a.axis < len(axes) else 0.0
            magnitude = abs(value)
            # Rescale past the deadzone so the output still spans the full range continuously.
            value = (0.0 if magnitude <= a.deadzone
                     else np.sign(value) * (magnitude - a.deadzone) / (1.0 - a.deadzone))
            action[a.action] = -value * a.scale if a.invert else value * a.scale
        self.action = np.clip(action, self.low, self.high) + 0.0  # + 0.0: no -0.0 from invert
        pressed = {i for i, b in enumerate(buttons) if b}
        requests = [self.mapping.buttons[i] for i in sorted(pressed - self._pressed)
                    if i in self.mapping.buttons]
        self._pressed = pressed
        return requests


# ----- saved policies -----

def load_policy_factory(spec: str) -> Callable:
    """'package.module:factory' -> factory(task) returning a callable obs -> action.

    The hook for policies that are not sim/ behaviour policies (e.g. a trained ONNX policy):
    the factory loads whatever it needs and returns the obs -> action function.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"policy {spec!r}: expected 'package.module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"policy {spec!r}: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"policy {spec!r}: {module_name} has no callable {attr!r}")
    return factory


class CallablePolicy:
    """An obs -> action callable with Gaussian action noise, behind the sim/ policy interface
    (reset(), act(obs)), clipped to the action bounds."""

    def __init__(self, fn: Callable, noise: float, seed: int, low, high):
        if not 0 <= noise < math.inf:  # NaN would pass `noise < 0`, and the policy ignore it
            raise ConfigError(f"noise must be a finite number >= 0, got {noise!r}")
        self.fn = fn
        self.noise = float(noise)
        self.low, self.high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
        self._rng = np.random.default_rng(seed)

    def reset(self) -> None:
        if hasattr(self.fn, "reset"):
            self.fn.reset()

    def act(self, obs: np.ndarray) -> np.ndarray:
        action = np.asarray(self.fn(obs), dtype=np.float64)
        if action.shape != self.low.shape:
            raise ConfigError(f"policy returned an action of shape {action.shape}, "
                              f"expected {self.low.shape}")
        if self.noise > 0:
            action = action + self.noise * self._rng.standard_normal(action.shape)
        return np.clip(action, self.low, self.high)
