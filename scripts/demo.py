"""`make demo`: the main job on local defaults, as far as the stack goes today.

Collects a cheetah-run dataset with the scripted behaviour policy in MuJoCo (no ROS), then
prints its summary and checks its invariants. Artifacts go to demo_out/.
"""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

from robot_stack.cli import main as robot_stack

OUT = Path("demo_out")


def step(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ robot-stack {' '.join(argv)}", flush=True)
    code = robot_stack(argv)
    if code != 0:
        sys.exit(code)


def run() -> None:
    dataset = OUT / "cheetah_scripted.zarr"
    if dataset.exists():
        shutil.rmtree(dataset)
    OUT.mkdir(exist_ok=True)
    step("collect scripted demonstrations in MuJoCo",
         ["sim", "collect", "--task", "cheetah-run", "--policy", "scripted", "--episodes", "5",
          "--out", str(dataset), "--seed", "0"])
    step("dataset summary", ["data", "info", str(dataset)])
    step("dataset invariants", ["data", "check", str(dataset)])
    print(f"\nartifacts: {dataset.resolve()}")


if __name__ == "__main__":
    run()
