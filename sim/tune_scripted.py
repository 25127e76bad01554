"""Offline cross-entropy search for the scripted CPG policy's parameters (run once per task).

    python -m sim.tune_scripted cheetah-run --target 400

Prints the best parameters as a CPGParams literal to paste into sim/policies.py. The search
stops once the best noise-free return exceeds ``--target``: the scripted policy is meant to be
a mediocre behaviour policy, well above random but far from expert.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from sim.policies import CPGParams, ScriptedPolicy, rollout_return
from sim.tasks import make_task


@dataclass
class Args:
    population: int = 24
    elites: int = 6
    iterations: int = 20
    horizon: int = 500  # control steps per evaluation episode (returns scale ~ with horizon)
    episodes: int = 1  # evaluation episodes per candidate (seeds 0..episodes-1)
    seed: int = 0
    noise: float = 0.0  # action noise during evaluation: > 0 favours gaits that survive noise
    target: float = float("inf")  # stop when the best full-episode-scaled return exceeds this


def bounds(act_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Search box of [frequency_hz, amplitude, phase, bias, pitch_gain, pitch_rate_gain,
    joint_gain, joint_damping] (the CPGParams fields, in order)."""
    per_joint_low = [0.0, -np.pi, -1.0, -2.0, -0.3, 0.0, 0.0]
    per_joint_high = [1.0, np.pi, 1.0, 2.0, 0.3, 4.0, 0.3]
    low = np.concatenate([[0.5]] + [np.full(act_dim, x) for x in per_joint_low])
    high = np.concatenate([[4.0]] + [np.full(act_dim, x) for x in per_joint_high])
    return low, high


def search(task_name: str, args: Args) -> tuple[CPGParams, float]:
    task = make_task(task_name)
    low, high = bounds(task.act_dim)
    rng = np.random.default_rng(args.seed)
    mean, std = (low + high) / 2, (high - low) / 4
    scale = task.max_steps / args.horizon

    def score(v):
        params = CPGParams.from_vector(v, task.act_dim)
        return scale * np.mean([
            rollout_return(task, ScriptedPolicy(task, params, noise=args.noise, seed=s), seed=s,
                           max_steps=args.horizon)
            for s in range(args.episodes)])

    best_v, best = mean, score(mean)
    for it in range(args.iterations):
        candidates = np.clip(mean + std * rng.standard_normal((args.population, len(mean))), low, high)
        scores = np.array([score(v) for v in candidates])
        elite = candidates[np.argsort(scores)[-args.elites:]]
        mean, std = elite.mean(0), elite.std(0) + 0.02 * (high - low)
        if scores.max() > best:
            best, best_v = scores.max(), candidates[scores.argmax()]
        print(f"{task_name} iter {it}: best {best:.1f}, population mean {scores.mean():.1f}", flush=True)
        if best > args.target:
            break
    return CPGParams.from_vector(best_v, task.act_dim), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("task")
    for field, default in vars(Args()).items():
        parser.add_argument(f"--{field}", type=type(default), default=default)
    ns = parser.parse_args()
    args = Args(**{k: getattr(ns, k) for k in vars(Args())})
    params, best = search(ns.task, args)
    rounded = {k: (round(v, 4) if isinstance(v, float) else tuple(round(x, 4) for x in v))
               for k, v in vars(params).items()}
    print(f"# best horizon-scaled return {best:.1f}")
    print(f'"{ns.task}": CPGParams(**{rounded!r}),')


if __name__ == "__main__":
    main()
