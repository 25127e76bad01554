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


def validate_datasets(paths: list[str], task_name: str, policy=None, max_samples: int = 20_000,
                      seed: int = 0) -> dict:
    """Dynamics, reward and (with a policy) action-likelihood checks of episode-store datasets.

    Every transition (s_t, a_t, s_{t+1}) inside an episode is a sample; its horizon is t, the
    position within its episode (a synthetic window or rollout, or a recorded episode). Errors of
    all datasets are normalised by the observation std of the first dataset, so they compare.
    At most `max_samples` transitions per dataset are checked (a seeded random subset).
    `policy` is an actor with log_prob(obs, action) (a trained run's), or None. Datasets hold
    actions in robot units, which the task takes as they are; the policy's likelihood is of the
    actions normalised with each dataset's bounds (ActionSpace), as the policy acts.
    """
    from robot_stack.action_space import ActionSpace
    from robot_stack.data import EpisodeStore

    if isinstance(max_samples, bool) or not isinstance(max_samples, int) or max_samples < 1:
        raise SimError(f"max_samples must be a whole number >= 1, got {max_samples!r}")
    task = make_task(task_name)
    reports, state_std = [], None
    for path in paths:
        store = EpisodeStore.open(str(path), mode="r")
        if store.keys["observation"].shape != (task.obs_dim,) or store.keys["action"].shape != (task.act_dim,):
            raise SimError(f"{path}: observation/action shapes {store.keys['observation'].shape}/"
                           f"{store.keys['action'].shape} do not fit {task_name} "
                           f"(({task.obs_dim},)/({task.act_dim},))")
        if store.task != task_name:  # same-sized bodies (cheetah, walker) would pass the shapes
            raise SimError(f"{path} holds {store.task} data, not {task_name}")
        if store.n_episodes == 0:
            raise SimError(f"{path}: no committed episodes to validate")
        if ActionSpace.of_store(store).to_dict() != task.action_space.to_dict():
            raise SimError(f"{path}: action bounds {ActionSpace.of_store(store).to_dict()} differ from "
                           f"{task_name}'s {task.action_space.to_dict()}")
        if state_std is None:
            state_std = store.stats()["observation"]["std"]
        ends = np.asarray(store.episode_ends)
        obs, act = store.read("observation"), store.read("action")
        starts = np.concatenate([[0], ends[:-1]])
        position = np.arange(len(obs)) - np.repeat(starts, ends - starts)
        has_next = np.ones(len(obs), dtype=bool)
        has_next[ends - 1] = False
        index = np.flatnonzero(has_next)
        if len(index) > max_samples:
            index = np.sort(np.random.default_rng(seed).choice(index, max_samples, replace=False))
        rewards = store.read("reward")[index] if "reward" in store.keys else None
        err = dynamics_error(task, obs[index], act[index], obs[index + 1], rewards, state_std=state_std)
        horizon = position[index]
        by_horizon = [float(np.nanmean(err["per_sample"][horizon == h])) if np.any(horizon == h) else None
                      for h in range(int(horizon.max()) + 1)]
        report = {"path": str(path), "source": sorted(set(store.episode_meta["source"])),
                  "generator": (store.generator or {}).get("kind"), "transitions": int(len(index)),
                  "dynamics_mse": err["mean"], "per_dim_mse": err["per_dim"].tolist(),
                  "by_horizon": by_horizon, "reward_mse": err["reward_mse"], "n_invalid": err["n_invalid"]}
        if policy is not None:
            report["policy_log_likelihood"] = _mean_log_likelihood(
                policy, obs[index], ActionSpace.of_store(store).normalize(act[index]))
        reports.append(report)
    return {"task": task_name, "normalised_by": f"observation std of {paths[0]}", "datasets": reports}


def _mean_log_likelihood(policy, obs: np.ndarray, act: np.ndarray) -> float:
    import torch

    with torch.no_grad():
        logp = policy.log_prob(torch.as_tensor(obs, dtype=torch.float32),
                               torch.as_tensor(np.clip(act, -0.999, 0.999), dtype=torch.float32))
    return float(logp.mean())


def plot_error_by_horizon(result: dict, out, max_horizon: int = 64) -> None:
    """Dynamics error against position in the trajectory, every dataset on one axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for report in result["datasets"]:
        points = [(h, e) for h, e in enumerate(report["by_horizon"][:max_horizon]) if e is not None]
        label = f"{report['generator'] or ','.join(report['source'])}: {report['path']}"
        ax.plot(*zip(*points), marker=".", label=label)
    ax.set_yscale("log")
    ax.set_xlabel("position in trajectory (steps)")
    ax.set_ylabel("normalised one-step MSE vs MuJoCo")
    ax.set_title(f"dynamics error, {result['task']}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
