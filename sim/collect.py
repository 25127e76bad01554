"""Collect behaviour-policy episodes from a simulated task into an episode store."""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from robot_stack.data import EpisodeStore, standard_keys
from sim.policies import make_policy
from sim.tasks import make_task

# The store's episode `source`: random data is plain simulator data, the CPG policy is scripted.
_SOURCE = {"random": "sim", "scripted": "scripted"}


def collect_dataset(task_name: str, policy_name: str, episodes: int, out, seed: int = 0,
                    noise: float = 0.3, max_steps: int | None = None, progress: bool = True,
                    start_time: float | None = None) -> dict:
    """Writes ``episodes`` episodes to a new store at ``out``; returns a summary dict.

    Episode i starts from reset(seed + i) and its policy noise is seeded with seed + i, so a
    dataset is reproducible from its arguments. Timestamps are start_time + t * control_dt
    (start_time defaults to the wall-clock time at collection).
    """
    task = make_task(task_name)
    policy = make_policy(policy_name, task, noise=noise, seed=seed)  # validates the name early
    steps_per_episode = min(max_steps or task.max_steps, task.max_steps)
    store = EpisodeStore.create(out, standard_keys(obs_dim=task.obs_dim, act_dim=task.act_dim),
                                task=task_name, robot=task.robot_description())
    start = time.time() if start_time is None else float(start_time)
    returns = []
    try:
        for episode in tqdm(range(episodes), desc=f"{task_name} {policy_name}", disable=not progress):
            policy = make_policy(policy_name, task, noise=noise, seed=seed + episode)
            data = _rollout(task, policy, seed + episode, steps_per_episode)
            episode_start = start + episode * task.max_steps * task.control_dt
            data["timestamp"] += episode_start
            store.append_episode(data, source=_SOURCE[policy_name], start_time=episode_start)
            returns.append(float(data["reward"].sum()))
        n_steps = store.n_steps
    finally:
        store.close()
    return {"path": str(out), "episodes": len(returns), "steps": int(n_steps),
            "mean_return": float(np.mean(returns)) if returns else float("nan")}


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
