"""Validate transitions (real, learned or synthetic) against the simulator's ground truth.

Each transition is checked on its own: the simulator is set to the given state, steps once with
the given action (``SimTask.step_from``), and the result is compared with the given next state
and reward. Errors therefore measure one-step dynamics consistency, never compounding drift;
callers who know each sample's rollout horizon group ``per_sample`` by it.
"""

from __future__ import annotations

import numpy as np
from sim.tasks import SimError, SimTask, make_task

# Floor for the per-dimension variance, so that a near-constant dimension does not blow up.
_MIN_VARIANCE = 1e-8


def dynamics_error(task: str | SimTask, states, actions, next_states, rewards=None,
                   state_std=None) -> dict:
    """One-step errors of (states, actions) -> (next_states, rewards) against the simulator.

    The squared error of each state dimension is divided by a per-dimension variance: by default
    the variance of the simulator's true next states over the given batch; pass ``state_std``
    (e.g. a dataset's observation std from ``EpisodeStore.stats()``) to use a fixed scale, so
    that errors of different batches are comparable.

    Returns a dict:
      per_dim      (obs_dim,) normalised MSE of each state dimension
      mean         float, the mean of per_dim
      per_sample   (N,) normalised squared error averaged over dimensions (NaN where invalid)
      reward_mse   float or None; reward_error (N,) absolute reward errors, or None
      n_invalid    samples whose state or action the simulator rejected or that made it
                   diverge (SimError: NaN, absurd values, MuJoCo instability); they are
                   left out of the means
    """
    task = make_task(task) if isinstance(task, str) else task
    states = np.asarray(states, dtype=np.float64)
    actions = np.asarray(actions, dtype=np.float64)
    next_states = np.asarray(next_states, dtype=np.float64)
    n = len(states)
    if states.shape != (n, task.obs_dim) or next_states.shape != states.shape \
            or actions.shape != (n, task.act_dim):
        raise SimError(f"{task.name}: need states and next_states (N, {task.obs_dim}) and actions "
                       f"(N, {task.act_dim}); got {states.shape}, {next_states.shape}, {actions.shape}")

    true_next = np.full_like(states, np.nan)
    true_reward = np.full(n, np.nan)
    for i in range(n):
        try:
            true_next[i], true_reward[i] = task.step_from(states[i], actions[i])
        except SimError:
            pass  # stays NaN: counted in n_invalid
    valid = np.all(np.isfinite(true_next), axis=1) & np.all(np.isfinite(next_states), axis=1)

    if state_std is not None:
        variance = np.asarray(state_std, dtype=np.float64) ** 2
    elif valid.any():
        variance = true_next[valid].var(axis=0)
    else:
        variance = np.ones(task.obs_dim)
    squared = (next_states - true_next) ** 2 / np.maximum(variance, _MIN_VARIANCE)
    per_sample = np.where(valid, squared.mean(axis=1), np.nan)
    per_dim = squared[valid].mean(axis=0) if valid.any() else np.full(task.obs_dim, np.nan)

    reward_error = reward_mse = None
    if rewards is not None:
        rewards = np.asarray(rewards, dtype=np.float64).reshape(n)
        reward_error = np.where(valid, np.abs(rewards - true_reward), np.nan)
        reward_mse = float(np.nanmean(reward_error ** 2)) if valid.any() else float("nan")
    return {
        "per_dim": per_dim,
        "mean": float(per_dim.mean()),
        "per_sample": per_sample,
        "reward_mse": reward_mse,
        "reward_error": reward_error,
        "n_invalid": int(n - valid.sum()),
    }
