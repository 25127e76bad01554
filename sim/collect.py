"""Collect behaviour-policy episodes from a simulated task into an episode store."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from robot_stack.data import EpisodeStore, standard_keys
from robot_stack.errors import DatasetError
from sim.policies import make_policy
from sim.tasks import SimError, make_task

# The store's episode `source`: random data is plain simulator data, the CPG policy is scripted.
_SOURCE = {"random": "sim", "scripted": "scripted"}


def collect_dataset(task_name: str, policy_name: str, episodes: int, out, seed: int = 0,
                    noise: float = 0.3, max_steps: int | None = None, progress: bool = True,
                    start_time: float | None = None) -> dict:
    """Writes ``episodes`` episodes to the store at ``out`` (created, or appended to when it holds
    a dataset of the same task and keys); returns a summary dict.

    Episode i of the dataset (counting the episodes it already holds) starts from
    reset(seed + i) and its policy noise is seeded with seed + i, so a dataset is reproducible
    from its arguments, whether collected in one run or several. Timestamps are
    start_time + t * control_dt (start_time defaults to the wall-clock time at collection).
    """
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise SimError(f"episodes must be a whole number >= 1, got {episodes!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                  or max_steps < 1):
        raise SimError(f"max_steps must be a whole number >= 1, got {max_steps!r}")
    if not 0 <= noise < math.inf:  # also refuses NaN, which the policy would ignore
        raise SimError(f"noise must be a finite number >= 0, got {noise!r}")
    task = make_task(task_name)
    policy = make_policy(policy_name, task, noise=noise, seed=seed)  # validates the name early
    steps_per_episode = min(max_steps or task.max_steps, task.max_steps)
    store = _open_for_collection(out, task_name, task, episodes)
    start = time.time() if start_time is None else float(start_time)
    first, returns = store.n_episodes, []
    try:
        for index in tqdm(range(first, first + episodes), desc=f"{task_name} {policy_name}",
                          disable=not progress):
            policy = make_policy(policy_name, task, noise=noise, seed=seed + index)
            data = _rollout(task, policy, seed + index, steps_per_episode)
            episode_start = start + (index - first) * task.max_steps * task.control_dt
            data["timestamp"] += episode_start
            store.append_episode(data, source=_SOURCE[policy_name], start_time=episode_start)
            returns.append(float(data["reward"].sum()))
        n_steps = store.n_steps
    except DatasetError as exc:
        raise DatasetError(f"{exc} ({len(returns)} of {episodes} episodes collected)") from None
    finally:
        store.close()
    return {"path": str(out), "episodes": len(returns), "steps": int(n_steps),
            "mean_return": float(np.mean(returns)) if returns else float("nan")}


def _open_for_collection(out, task_name: str, task, episodes: int) -> EpisodeStore:
    """A new store at `out`, or the one there when its task and keys match, with `episodes` more
    episodes planned."""
    keys = standard_keys(obs_dim=task.obs_dim, act_dim=task.act_dim)
    if episodes < 1:
        raise DatasetError(f"--episodes must be >= 1, got {episodes}")
    if not (Path(out) / "zarr.json").exists():
        return EpisodeStore.create(out, keys, task=task_name, robot=task.robot_description(),
                                   planned_episodes=episodes)
    store = EpisodeStore.open(out, mode="a")
    try:
        theirs = {k: (s.shape, s.dtype) for k, s in store.keys.items()}
        ours = {k: (s.shape, s.dtype) for k, s in keys.items()}
        if store.task != task_name or theirs != ours:
            raise DatasetError(f"{out} holds a {store.task!r} dataset with keys {theirs}; {task_name!r} "
                               f"episodes have keys {ours}: collect into another --out")
        store.plan_episodes(episodes)
    except BaseException:
        store.close()
        raise
    return store


def _rollout(task, policy, seed: int, n_steps: int) -> dict[str, np.ndarray]:
    """One episode as store arrays: observation[t] is the state the action[t] was taken in."""
    obs, _ = task.reset(seed=seed)
    policy.reset()
    observations, actions, rewards, terminals = [], [], [], []
    for _ in range(n_steps):
        # Stored actions are float32: step with exactly the stored value so the data replays.
        action = np.clip(policy.act(obs), task.action_space.low, task.action_space.high).astype(np.float32)
        observations.append(obs)
        actions.append(action)
        obs, reward, terminal, truncated, _ = task.step(action)
        rewards.append(reward)
        terminals.append(terminal)
        if terminal or truncated:
            break
    return {
        "observation": np.asarray(observations, dtype=np.float32),
        "action": np.asarray(actions, dtype=np.float32),
        "reward": np.asarray(rewards, dtype=np.float32),
        "terminal": np.asarray(terminals, dtype=bool),
        "timestamp": np.arange(len(rewards), dtype=np.float64) * task.control_dt,
    }
