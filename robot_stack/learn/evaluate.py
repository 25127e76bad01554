"""Closed-loop evaluation of a policy in a MuJoCo task, reported as a normalised return."""
from __future__ import annotations

from typing import Callable

import numpy as np

from robot_stack.errors import ConfigError

ActFn = Callable[[np.ndarray], np.ndarray]


def is_sim_task(name: str | None) -> bool:
    from sim import TASK_NAMES

    return name in TASK_NAMES


def evaluate_policy(act: ActFn, task_name: str, episodes: int = 5, seed: int = 0,
                    max_steps: int | None = None) -> dict:
    """Mean and std of the undiscounted return of `act` (obs -> action in the task's units) over
    `episodes` episodes from reset(seed + i), with the normalised return of the mean.

    Seeds are offset from the collection seeds by the caller's choice of `seed`.
    """
    from sim import make_task
    from sim.reference import normalized_return

    if not is_sim_task(task_name):
        raise ConfigError(f"cannot evaluate in {task_name!r}: not a sim task")
    if episodes < 1:
        raise ConfigError(f"evaluation needs at least one episode, got {episodes}")
    task = make_task(task_name)
    returns = []
    for episode in range(episodes):
        obs, _ = task.reset(seed=seed + episode)
        total, done, steps = 0.0, False, 0
        while not done:
            obs, reward, terminal, truncated, _ = task.step(act(obs))
            total += reward
            steps += 1
            done = terminal or truncated or (max_steps is not None and steps >= max_steps)
        returns.append(total)
    mean = float(np.mean(returns))
    return {"task": task_name, "episodes": episodes, "mean_return": mean,
            "std_return": float(np.std(returns)), "normalized_return": normalized_return(task_name, mean),
            "returns": [float(r) for r in returns]}
