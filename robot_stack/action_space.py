"""Robot action units <-> the normalised action space [-1, 1] that everything learned works in.

The recorder stores commands in robot units, clipped to the spec's bounds (a gripper in
[0, 0.04] m, joints in [-2.9, 2.9] rad). The agents' tanh actors, TD3+BC's target smoothing,
the diffusion encoding (atanh), policy guidance and the world model all work per dimension in
[-1, 1]. This module is the one place that maps between the two, affinely per dimension, from
the bounds in a dataset's robot description (`action_low`, `action_high`; asymmetric bounds are
fine):

    normalised = (robot - center) / half_range        robot = center + half_range * normalised

Actions are normalised once on the way in (a dataset loaded for an agent or a generator) and
mapped back once on the way out (a synthetic dataset written to disk, a policy evaluated in
MuJoCo, the exported ONNX graph). A dataset without bounds is refused: guessing [-1, 1] would
silently scale a robot's commands wrongly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_stack.errors import DatasetError


@dataclass(frozen=True)
class ActionSpace:
    low: np.ndarray   # (act_dim,) float64, robot units
    high: np.ndarray  # (act_dim,) float64

    def __post_init__(self):
        low, high = (np.asarray(v, np.float64).reshape(-1) for v in (self.low, self.high))
        if low.shape != high.shape or not (np.isfinite(low).all() and np.isfinite(high).all()):
            raise DatasetError(f"action bounds must be finite and of one size, got low {low.tolist()} "
                               f"high {high.tolist()}")
        if not (low < high).all():
            raise DatasetError(f"every action bound needs low < high, got low {low.tolist()} "
                               f"high {high.tolist()}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_robot(cls, robot: dict, act_dim: int, origin: str) -> ActionSpace:
        """The bounds of a robot description (a dataset's `robot` attribute, a task's)."""
        if "action_low" not in robot or "action_high" not in robot:
            raise DatasetError(f"{origin}: the robot description has no action bounds "
                               "(action_low, action_high), needed to map actions into [-1, 1]")
        space = cls(robot["action_low"], robot["action_high"])
        if space.low.shape != (act_dim,):
            raise DatasetError(f"{origin}: the robot description has {space.low.size} action bounds, "
                               f"the action has {act_dim} values")
        return space

    @classmethod
    def of_store(cls, store) -> ActionSpace:
        return cls.from_robot(store.robot, store.keys["action"].shape[0], f"dataset {store.path}")

    @property
    def center(self) -> np.ndarray:
        return (self.high + self.low) / 2

    @property
    def half_range(self) -> np.ndarray:
        return (self.high - self.low) / 2

    def normalize(self, action) -> np.ndarray:
        """Robot units -> [-1, 1], float64; values beyond the bounds are clipped to them, as the
        robot clips them (NaN stays NaN for the caller to refuse)."""
        unit = (np.asarray(action, np.float64) - self.center) / self.half_range
        return np.minimum(np.maximum(unit, -1.0), 1.0)

    def to_robot(self, action) -> np.ndarray:
        """[-1, 1] -> robot units, float64, inside [low, high]."""
        robot = self.center + self.half_range * np.asarray(action, np.float64)
        return np.minimum(np.maximum(robot, self.low), self.high)

    def to_dict(self) -> dict:
        return {"action_low": self.low.tolist(), "action_high": self.high.tolist()}
