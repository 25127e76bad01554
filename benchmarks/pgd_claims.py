"""The three claims of Policy-Guided Diffusion (../shared/docs/pgd-method.md), measured here.

On a cheetah-run dataset from the noisy scripted behaviour policy, with a TD3+BC target policy
trained on it:
  1. guided sampling raises the target policy's log-likelihood of the synthetic actions over
     unguided sampling, increasingly with lambda;
  2. PGD trajectories have lower MuJoCo dynamics error at horizon 32 than world-model rollouts
     of the same length (and the whole error-against-horizon curve of both);
  3. TD3+BC on real data alone vs. with unguided synthetic data vs. with PGD data: normalised
     return over several seeds.

Every stage writes into --out and is skipped when its result is already there, so an
interrupted run continues where it stopped. Prints a Markdown table (copied into README) and
writes results.json and error_by_horizon.png.

    python benchmarks/pgd_claims.py                 # the full study (about 1.5 h on 2 cores)
    python benchmarks/pgd_claims.py --quick         # a few minutes, to check the pipeline
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ClaimsConfig:
    out: str = "benchmarks/out/pgd_claims"
    task: str = "cheetah-run"
    episodes: int = 100                # x 1000 steps of scripted behaviour data
    behaviour_noise: float = 0.3
    target_steps: int = 30_000         # TD3+BC updates of the target policy
    diffusion_steps: int = 10_000      # EDM training steps
    sample_steps: int = 32             # EDM sampler steps
    windows: int = 256                 # generated windows / rollouts per dataset
    lambdas: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 1.0, 3.0])
    pgd_lambda: float = 1.0            # the guidance used for claims 2 and 3
    horizon: int = 32
    agent_steps: int = 30_000          # TD3+BC updates per claim-3 run
    seeds: int = 3
    synthetic_fraction: float = 0.5
    regen_every: int = 10_000
    synthetic_size: int = 256
    eval_episodes: int = 10
    threads: int = 1                   # torch threads: 2 collapse when the cores are shared

    @classmethod
    def quick(cls, out: str) -> "ClaimsConfig":
        return cls(out=out, episodes=4, target_steps=500, diffusion_steps=200, sample_steps=8,
                   windows=16, lambdas=[0.0, 1.0], agent_steps=300, seeds=2, regen_every=150,
                   synthetic_size=16, eval_episodes=1)


def stage(name: str, path: Path, fn):
    """Run fn() unless `path` already holds its JSON result."""
    if path.exists():
        print(f"[{name}] cached: {path}", flush=True)
        return json.loads(path.read_text())
    print(f"[{name}] ...", flush=True)
    t0 = time.perf_counter()
    result = fn()
    result["seconds"] = round(time.perf_counter() - t0, 1)
    path.write_text(json.dumps(result, indent=2))
    print(f"[{name}] done in {result['seconds']} s", flush=True)
    return result


def run(cfg: ClaimsConfig) -> dict:
    import torch

    from robot_stack.learn.edm import DiffusionConfig, fit_diffusion
    from robot_stack.learn.guidance import GuidanceConfig
    from robot_stack.learn.synthetic import generate, load_generator
    from robot_stack.learn.trainer import TrainConfig, load_policy, train
    from robot_stack.learn.world_model import WorldModelConfig, fit_world_model
    from sim.collect import collect_dataset
    from sim.validate import plot_error_by_horizon, validate_datasets

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg.__dict__, indent=2))
    data = str(out / "behaviour.zarr")
    t_start = time.perf_counter()

    stage("collect", out / "collect.json", lambda: collect_dataset(
        cfg.task, "scripted", cfg.episodes, data, seed=0, noise=cfg.behaviour_noise, progress=True))

    def train_run(name: str, synthetic: str, seed: int, steps: int) -> dict:
        result = train(TrainConfig(
            dataset=data, out=str(out / "runs" / name), algo="td3bc", synthetic=synthetic, steps=steps,
            seed=seed, eval_every=steps, eval_episodes=cfg.eval_episodes, log_every=max(1, steps // 10),
            checkpoint_every=steps, synthetic_fraction=cfg.synthetic_fraction, regen_every=cfg.regen_every,
            synthetic_size=cfg.synthetic_size, guidance=cfg.pgd_lambda, horizon=cfg.horizon,
            sample_steps=cfg.sample_steps, generator=str(out / "diffusion")), progress=True)
        return result["eval"]

    target_run = out / "runs" / "target"
    stage("target policy", out / "target.json", lambda: train_run("target", "none", 100, cfg.target_steps))
    stage("diffusion", out / "diffusion.json", lambda: fit_diffusion(
        data, out / "diffusion", DiffusionConfig(horizon=cfg.horizon, train_steps=cfg.diffusion_steps,
                                                 sample_steps=cfg.sample_steps),
        log=print, log_every=max(1, cfg.diffusion_steps // 10)).source)
    stage("world model", out / "world_model.json", lambda: fit_world_model(
        data, out / "world_model", WorldModelConfig(rollout_horizon=cfg.horizon), log=print).source)

    target = load_policy(target_run)
    diffusion = load_generator(out / "diffusion")

    def sample(lam: float) -> str:
        path = out / f"pgd_lambda_{lam:g}.zarr"
        if not path.exists():
            generate(diffusion, target.actor if lam else None, GuidanceConfig(lam=lam), episodes=cfg.windows,
                     out=path, seed=1, policy_name=str(target_run))
        return str(path)

    def claim1() -> dict:
        paths = [sample(lam) for lam in cfg.lambdas]
        result = validate_datasets([data] + paths, cfg.task, target.actor)
        return {"lambdas": cfg.lambdas, "datasets": result["datasets"]}

    claim1_result = stage("claim 1: guidance sweep", out / "claim1.json", claim1)

    def claim2() -> dict:
        wm_path = out / "world_model_rollouts.zarr"
        if not wm_path.exists():
            generate(load_generator(out / "world_model"), target.act, episodes=cfg.windows, out=wm_path,
                     seed=1, policy_name=str(target_run))
        result = validate_datasets([data, sample(cfg.pgd_lambda), str(wm_path)], cfg.task, target.actor)
        plot_error_by_horizon(result, out / "error_by_horizon.png", max_horizon=cfg.horizon)
        return result

    claim2_result = stage("claim 2: PGD vs world model", out / "claim2.json", claim2)

    def claim3() -> dict:
        returns: dict[str, list[float]] = {}
        for synthetic in ("none", "diffusion", "pgd"):
            for seed in range(cfg.seeds):
                name = f"{synthetic}_seed{seed}"
                cached = out / "runs" / name / "result.json"
                evaluation = (json.loads(cached.read_text())["eval"] if cached.exists()
                              else train_run(name, synthetic, seed, cfg.agent_steps))
                returns.setdefault(synthetic, []).append(evaluation["normalized_return"])
        return {"normalized_return": returns}

    claim3_result = stage("claim 3: agent returns", out / "claim3.json", claim3)
    report = {"config": cfg.__dict__, "claim1": claim1_result, "claim2": claim2_result,
              "claim3": claim3_result, "wall_seconds_this_invocation": round(time.perf_counter() - t_start)}
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(markdown(report))
    return report


def markdown(report: dict) -> str:
    cfg = report["config"]
    lines = ["Claim 1: target-policy log-likelihood of the actions (higher = more on-policy)", "",
             "| data | lambda | log-likelihood | dynamics MSE |", "|---|---|---|---|"]
    real, *sampled = report["claim1"]["datasets"]
    lines.append(f"| behaviour data | - | {real['policy_log_likelihood']:.2f} | {real['dynamics_mse']:.2e} |")
    for lam, d in zip(report["claim1"]["lambdas"], sampled):
        lines.append(f"| {'PGD' if lam else 'unguided diffusion'} | {lam:g} | "
                     f"{d['policy_log_likelihood']:.2f} | {d['dynamics_mse']:.2e} |")
    h = cfg["horizon"] - 2  # the last transition of an H-step window starts at position H-2
    _, pgd, wm = report["claim2"]["datasets"]
    lines += ["", f"Claim 2: normalised one-step dynamics MSE against MuJoCo (lambda {cfg['pgd_lambda']:g})", "",
              "| generator | all positions | position 0 | position 15 | last position |", "|---|---|---|---|---|"]
    for name, d in (("PGD", pgd), ("world model", wm)):
        by = d["by_horizon"]
        lines.append(f"| {name} | {d['dynamics_mse']:.3e} | {by[0]:.3e} | {by[min(15, len(by) - 1)]:.3e} | "
                     f"{by[min(h, len(by) - 1)]:.3e} (t={min(h, len(by) - 1)}) |")
    lines += ["", f"Claim 3: TD3+BC normalised return, {cfg['agent_steps']} updates, "
              f"{cfg['seeds']} seeds, {cfg['eval_episodes']} evaluation episodes each", "",
              "| training data | mean | std | per seed |", "|---|---|---|---|"]
    names = {"none": "real only", "diffusion": "real + unguided diffusion", "pgd": "real + PGD"}
    for key, values in report["claim3"]["normalized_return"].items():
        lines.append(f"| {names[key]} | {np.mean(values):.1f} | {np.std(values):.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in values)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=ClaimsConfig.out)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the pipeline in minutes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args()
    cfg = ClaimsConfig.quick(args.out) if args.quick else ClaimsConfig(out=args.out)
    cfg.threads = args.threads
    run(cfg)


if __name__ == "__main__":
    main()
