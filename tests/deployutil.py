"""A small trained run and its ONNX export, shared by the deployment tests (module fixtures)."""
from __future__ import annotations

from pathlib import Path

TASK = "cheetah-run"


def train_small_run(root: Path) -> Path:
    """TD3+BC for a few hundred steps on two short scripted cheetah episodes; returns the run."""
    from robot_stack.learn.trainer import TrainConfig, train
    from sim.collect import collect_dataset

    dataset = root / "cheetah.zarr"
    collect_dataset(TASK, "scripted", 2, str(dataset), seed=0, max_steps=200, progress=False)
    run = root / "run"
    train(TrainConfig(dataset=str(dataset), out=str(run), steps=300, log_every=100,
                      checkpoint_every=300, eval_every=100_000, eval_episodes=1, batch_size=64),
          progress=False, log=lambda line: None)
    return run


def exported_policy(root: Path) -> tuple[Path, Path]:
    """(run, policy.onnx) for a fresh small run under root."""
    from robot_stack.deploy.export import export_policy

    run = train_small_run(root)
    policy = root / "policy.onnx"
    export_policy(run, policy)
    return run, policy
