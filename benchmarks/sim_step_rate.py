"""Steps per second of sim tasks, against stock dm_control environments in the same run.

    python benchmarks/sim_step_rate.py [--steps 3000]

Baseline: dm_control's control.Environment.step (builds a TimeStep and observation dict each
step; solver warmstart on). Ours: SimTask.step and SimTask.step_from (set state, step, reward;
warmstart off, which costs walker and hopper about one extra solver iteration per substep).
Single thread; each figure is the best of 5 timings.
"""

import argparse
import time

import numpy as np
from dm_control import suite

from sim import make_task
from sim.tasks import _SUITE_TASKS


def rate(step, n_steps: int, repeats: int = 5) -> float:
    """Best of ``repeats`` timings: on a shared machine the fastest run is the least disturbed."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n_steps):
            step()
        best = min(best, time.perf_counter() - start)
    return n_steps / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="steps per timing (best of 5)")
    n = parser.parse_args().steps
    print(f"{'task':<12} {'dm_control env':>15} {'SimTask.step':>13} {'step_from':>10}  (steps/s)")
    for name in _SUITE_TASKS:  # the rescaled tasks step the same bodies
        rng = np.random.default_rng(0)
        env = suite.load(*_SUITE_TASKS[name], task_kwargs={"random": 0})
        action = rng.uniform(-1, 1, env.action_spec().shape)
        env.reset()

        def env_step():
            if env.step(action).last():
                env.reset()
        task = make_task(name)
        task.reset(seed=0)

        def task_step():
            if task.step(action)[3]:
                task.reset()
        state = task.get_state()
        print(f"{name:<12} {rate(env_step, n):>15.0f} {rate(task_step, n):>13.0f} "
              f"{rate(lambda: task.step_from(state, action), n):>10.0f}")


if __name__ == "__main__":
    main()
