"""Reference episode returns per task, for normalised scores.

random: mean undiscounted 1000-step return of ``RandomPolicy(seed=s)`` from ``reset(seed=s)`` for
    s = 0..9 in this repository's tasks (warmstart disabled), i.e. ``measure_return(task, "random")``.
expert: state-based SAC from denisyarats/pytorch_sac, file data/sac.csv (commit 81c5b53): the mean
    over its 3 seeds of the last 10 evaluation returns (about 9.8M-10M environment steps).
    (The same file gives SAC at 0.9M-1M steps: cheetah-run 797, walker-walk 911, hopper-hop 209.)
"""

from __future__ import annotations

import numpy as np

from sim.policies import make_policy, rollout_return
from sim.tasks import TASK_NAMES, SimError, make_task, suite_task

REFERENCE_RETURNS: dict[str, dict[str, float]] = {
    "cheetah-run": {"random": 3.47, "expert": 918.2},
    "walker-walk": {"random": 32.65, "expert": 980.6},
    "hopper-hop": {"random": 0.012, "expert": 321.8},
}
# A rescaled task is its suite task commanded in other units: same returns, same references.
REFERENCE_RETURNS.update({name: REFERENCE_RETURNS[suite_task(name)] for name in TASK_NAMES
                          if name not in REFERENCE_RETURNS})
REFERENCE_EPISODES = 10

# The scripted behaviour policy (sim/policies.py), measured like the random reference:
# measure_return(task, "scripted", noise) for noise 0 and the collection default 0.3.
SCRIPTED_RETURNS: dict[str, dict[float, float]] = {
    "cheetah-run": {0.0: 247.92, 0.3: 231.51},
    "walker-walk": {0.0: 168.16, 0.3: 84.22},  # bimodal: ~500 from upright starts, ~25 when fallen
    "hopper-hop": {0.0: 1.83, 0.3: 1.95},  # rarely hops forward; random is 0.012
}


def normalized_return(task: str, episode_return: float) -> float:
    """100 * (R - R_random) / (R_expert - R_random): 0 = random, 100 = expert."""
    if task not in REFERENCE_RETURNS:
        raise SimError(f"no reference returns for task {task!r}")
    ref = REFERENCE_RETURNS[task]
    return 100.0 * (episode_return - ref["random"]) / (ref["expert"] - ref["random"])


def measure_return(task_name: str, policy_name: str, noise: float = 0.0,
                   episodes: int = REFERENCE_EPISODES) -> float:
    """Mean 1000-step return of make_policy(policy_name, noise, seed=s) from reset(seed=s)."""
    task = make_task(task_name)
    return float(np.mean([rollout_return(task, make_policy(policy_name, task, noise=noise, seed=s), seed=s)
                          for s in range(episodes)]))


def main() -> None:
    """Prints today's measured returns next to the stored references (python -m sim.reference)."""
    for name in TASK_NAMES:
        measured = {"random": measure_return(name, "random"),
                    "scripted noise 0": measure_return(name, "scripted", 0.0),
                    "scripted noise 0.3": measure_return(name, "scripted", 0.3)}
        print(name, "  ".join(f"{k}: {v:.2f} ({normalized_return(name, v):.1f})" for k, v in measured.items()),
              f"  stored random {REFERENCE_RETURNS[name]['random']}", flush=True)


if __name__ == "__main__":
    main()
