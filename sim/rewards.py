"""Reward functions the sim tasks ship, for datasets recorded without a reward stream.

The trainer calls them as fn(obs, act, next_obs) -> (reward, terminal or None). A sim task's
reward is exactly the one MuJoCo gives for stepping `act` from `obs`, so it is recomputed that
way rather than approximated from next_obs alone.
"""
from __future__ import annotations

import numpy as np

from sim.tasks import make_task


def task_reward_fn(task_name: str):
    task = make_task(task_name)

    def reward_fn(obs: np.ndarray, act: np.ndarray, next_obs: np.ndarray):
        _, reward = task.step_from_batch(obs, act)
        return reward.astype(np.float32), None  # these locomotion tasks have no true terminals

    return reward_fn
