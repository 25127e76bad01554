"""The rewards an agent and the generators learn from: the dataset's, or computed at load time.

Teleop recordings often have no reward (no `reward` key). One spec chooses the reward, and the
trainer, the diffusion generator (its reward channel) and the world model (its reward head) all
learn from the same per-step labels:

    None               the dataset's `reward` key; for a dataset without one whose task is a
                       sim task, that task's reward (recomputed in MuJoCo)
    "success"          sparse: 1 on the final step of each episode labelled successful
                       (meta/episode_success == 1, what the recorder's stop service writes),
                       which becomes a terminal step; 0 everywhere else
    "module:function"  fn(obs, act, next_obs) -> (reward, terminal or None), called once with
                       every step (act in robot units; an episode's final step has no successor
                       and gets next_obs = obs); terminal None keeps the stored flags
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from robot_stack.errors import ConfigError, DatasetError

SUCCESS = "success"
RewardFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray | None]]


class StepRewards(NamedTuple):
    reward: np.ndarray    # (T,) float32, one per committed step
    terminal: np.ndarray  # (T,) bool
    source: str           # what produced them: "dataset", "success", "task ...", "module:function"


def load_reward_fn(spec: str) -> Callable:
    """Import "package.module:function"; it is called as fn(obs, act, next_obs) -> (reward, terminal|None)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--reward must be 'success' or look like module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load reward function {spec!r}: {e}") from e
    if not callable(fn):
        raise ConfigError(f"reward function {spec!r} is not callable")
    return checked_reward_fn(fn, spec)


def checked_reward_fn(fn: Callable, spec: str) -> Callable:
    """`fn` with its failures and malformed results as one-line ConfigErrors naming it: a
    user's function fails in user code, and its traceback says nothing about our contract."""

    def reward_fn(obs, act, next_obs):
        try:
            result = fn(obs, act, next_obs)
        except Exception as e:
            raise ConfigError(f"reward function {spec} raised {type(e).__name__}: "
                              f"{first_line(e)}") from None
        if not isinstance(result, tuple) or len(result) != 2:
            raise ConfigError(f"reward function {spec} must return a pair (reward, terminal or "
                              f"None), got {type(result).__name__}")
        reward, terminal = result
        try:
            reward = np.asarray(reward, dtype=np.float64)
            terminal = None if terminal is None else np.asarray(terminal, dtype=bool)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"reward function {spec} returned values that are not numbers: "
                              f"{first_line(e)}") from None
        n = len(obs)
        if reward.shape != (n,) or (terminal is not None and terminal.shape != (n,)):
            raise ConfigError(f"reward function {spec} must return {n} rewards and {n} terminal "
                              f"flags (or None) for {n} transitions, got shapes {reward.shape} "
                              f"and {None if terminal is None else terminal.shape}")
        if not np.isfinite(reward).all():
            raise ConfigError(f"reward function {spec} returned NaN or infinite rewards")
        return reward, terminal

    return reward_fn


def first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [""])[0]


def step_rewards(store, reward: str | RewardFn | None = None) -> StepRewards:
    """Reward and terminal flag of every committed step of an EpisodeStore (see the module doc)."""
    n_steps = store.n_steps
    ends = np.asarray(store.episode_ends, dtype=np.int64)
    terminal = store.read("terminal", 0, n_steps).astype(bool)
    if reward == SUCCESS:
        successful = ends[store.episode_meta["success"] == 1] - 1
        if len(successful) == 0:
            raise DatasetError(f"--reward success: no episode of {store.path} is labelled successful "
                               "(meta/episode_success == 1)")
        labels = np.zeros(n_steps, np.float32)
        labels[successful] = 1.0
        terminal[successful] = True
        return StepRewards(labels, terminal, SUCCESS)
    if reward is None:
        if "reward" in store.keys:
            return StepRewards(store.read("reward", 0, n_steps).astype(np.float32), terminal, "dataset")
        from robot_stack.learn.evaluate import is_sim_task

        if not is_sim_task(store.task):
            raise DatasetError(
                f"dataset {store.path} has no rewards (task {store.task!r} is not a sim task that "
                "ships a reward): pass --reward success (episodes labelled successful) or "
                "--reward module:function computing (reward, terminal) from "
                "(observation, action, next_observation)")
        from sim.rewards import task_reward_fn

        fn, source = task_reward_fn(store.task), f"task {store.task}"
    elif isinstance(reward, str):
        fn, source = load_reward_fn(reward), reward
    else:
        fn, source = reward, getattr(reward, "__qualname__", "function")
    if "observation" not in store.keys:
        raise DatasetError(f"dataset has no 'observation' key (keys: {sorted(store.keys)})")
    obs = store.read("observation", 0, n_steps)
    is_last = np.zeros(n_steps, dtype=bool)
    is_last[ends - 1] = True
    next_obs = obs[np.where(is_last, np.arange(n_steps), np.arange(n_steps) + 1)]
    values, fn_terminal = fn(obs, store.read("action", 0, n_steps), next_obs)
    values = np.asarray(values, dtype=np.float32).reshape(-1)
    if values.shape[0] != n_steps:
        raise DatasetError(f"reward function {source} returned {values.shape[0]} rewards for "
                           f"{n_steps} steps")
    if fn_terminal is not None:
        terminal = np.asarray(fn_terminal, dtype=bool).reshape(n_steps)
    return StepRewards(values, terminal, source)
