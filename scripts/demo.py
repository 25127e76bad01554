"""`make demo`: the whole loop on local defaults, in about 6 minutes on 2 cores.

1. a MuJoCo cheetah runs as a ROS 2 robot (sim node), a scripted teleop drives it, and the
   recorder writes the episodes to a Zarr dataset over DDS;
2. TD3+BC trains on it with policy-guided diffusion (PGD) synthetic data, on a small budget;
3. the policy is exported to ONNX (with the parity check);
4. the policy node drives the sim over ROS 2 while the recorder logs the rollout;
then the deployed policy's return is printed next to the behaviour data's.
Artifacts go to demo_out/ (removed at the start). Every node is a `robot-stack` verb, so the
demo runs the same commands a user would.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

OUT = Path("demo_out").resolve()
SPEC = str(Path("config/robot_cheetah_sim.yaml").resolve())
TASK = "cheetah-run"
EPISODES = 20           # behaviour episodes of 1000 steps
TRAIN_STEPS = 10_000    # TD3+BC updates
GENERATOR_STEPS = 1_500  # diffusion training steps
CLI = [sys.executable, "-m", "robot_stack.cli"]


def banner(text: str) -> None:
    print(f"\n== {text}", flush=True)


def cli(*args: str, capture: bool = True) -> str:
    """Runs a verb; its output is returned (capture) or shown as it comes (long verbs)."""
    print("$ robot-stack " + " ".join(args), flush=True)
    proc = subprocess.run(CLI + list(args), stdout=subprocess.PIPE if capture else None, text=True)
    if proc.returncode != 0:
        sys.exit(f"demo: `robot-stack {' '.join(args)}` failed (exit {proc.returncode})")
    return proc.stdout


class Nodes:
    """ROS 2 nodes as `robot-stack` subprocesses, stopped with SIGINT like Ctrl-C would."""

    def __init__(self, log_dir: Path):
        self.log_dir, self.procs = log_dir, []

    def start(self, name: str, *args: str) -> None:
        print(f"$ robot-stack {' '.join(args)} &   (log: {self.log_dir / name}.log)", flush=True)
        log = open(self.log_dir / f"{name}.log", "w")
        self.procs.append((name, subprocess.Popen(CLI + list(args), stdout=log, stderr=subprocess.STDOUT)))

    def check_alive(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                self.stop()
                sys.exit(f"demo: the {name} node exited ({proc.returncode}); see {self.log_dir / name}.log")

    def stop(self) -> None:
        for _, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for _, proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs = []


def committed_episodes(path: Path) -> tuple[int, int]:
    from robot_stack.data import EpisodeStore

    if not path.exists():
        return 0, 0
    store = EpisodeStore.open(str(path), mode="r")
    return store.n_episodes, store.n_steps + store.uncommitted_steps


def wait_for_episodes(nodes: Nodes, path: Path, episodes: int, steps_per_episode: int, desc: str) -> None:
    with tqdm(total=episodes * steps_per_episode, desc=desc, unit="step") as bar:
        while True:
            nodes.check_alive()
            done, steps = committed_episodes(path)
            bar.update(min(steps, bar.total) - bar.n)
            if done >= episodes:
                return
            time.sleep(0.5)


def episode_returns(path: Path) -> np.ndarray:
    from robot_stack.data import EpisodeStore

    store = EpisodeStore.open(str(path), mode="r")
    return np.array([store.episode(i)["reward"].sum() for i in range(store.n_episodes)])


def run() -> None:
    from sim.reference import normalized_return

    shutil.rmtree(OUT, ignore_errors=True)
    (OUT / "logs").mkdir(parents=True)
    # A domain of its own, so the demo neither hears nor disturbs other ROS 2 graphs here.
    os.environ.setdefault("ROS_DOMAIN_ID", str(90 + os.getpid() % 10))
    behaviour, deployed = OUT / "behaviour.zarr", OUT / "deployed.zarr"
    run_dir, policy = OUT / "run", OUT / "policy.onnx"
    start = time.perf_counter()

    banner(f"1/4 record {EPISODES} scripted episodes over ROS 2 (sim node + teleop + recorder)")
    nodes = Nodes(OUT / "logs")
    # Lockstep: the sim steps once the teleop answered its last state, as fast as DDS allows.
    nodes.start("sim", "sim", "serve", "--task", TASK, "--lockstep", "--realtime-factor", "0")
    nodes.start("teleop", "teleop", "--source", "scripted", "--task", TASK, "--noise", "0.3")
    nodes.start("recorder", "record", "--spec", SPEC, "--out", str(behaviour), "--auto-episodes",
                "--on-shutdown", "discard", "--source", "scripted")
    try:
        wait_for_episodes(nodes, behaviour, EPISODES, 1000, "recording")
    finally:
        nodes.stop()
    print(cli("data", "info", str(behaviour)))

    banner(f"2/4 train TD3+BC with PGD synthetic data ({TRAIN_STEPS} updates, "
           f"diffusion {GENERATOR_STEPS} steps)")
    cli("train", "--dataset", str(behaviour), "--out", str(run_dir), "--algo", "td3bc", "--synthetic", "pgd",
        "--steps", str(TRAIN_STEPS), "--generator-steps", str(GENERATOR_STEPS), "--synthetic-size", "128",
        "--regen-every", "5000", "--eval-every", "5000", "--eval-episodes", "3", "--log-every", "1000",
        capture=False)

    banner("3/4 export to ONNX (parity-checked against torch)")
    print(cli("export", str(run_dir), "--out", str(policy)))

    banner("4/4 deploy: the policy node drives the sim over ROS 2; the recorder logs the rollout")
    nodes.start("sim", "sim", "serve", "--task", TASK, "--lockstep", "--seed", "1000")
    nodes.start("policy", "deploy", "--policy", str(policy), "--spec", SPEC, "--trigger", "observation")
    nodes.start("recorder", "record", "--spec", SPEC, "--out", str(deployed), "--auto-episodes",
                "--on-shutdown", "discard", "--source", "sim")
    try:
        wait_for_episodes(nodes, deployed, 1, 1000, "deployed episode (real time)")
    finally:
        nodes.stop()

    behaviour_returns, deployed_returns = episode_returns(behaviour), episode_returns(deployed)
    # The sim seeds its episode i with 1000 + i; the recorder keeps the first whole episode the
    # policy drove, so in-process evaluation from the same seeds gives its return exactly.
    offline = json.loads(cli("eval", "--policy", str(policy), "--task", TASK, "--episodes", "3",
                             "--seed", "1000", "--json"))
    b, d = behaviour_returns.mean(), deployed_returns[0]
    banner(f"result ({time.perf_counter() - start:.0f} s)")
    print(f"behaviour data (scripted, noise 0.3): mean return {b:7.1f}  "
          f"(normalised {normalized_return(TASK, b):5.1f}) over {len(behaviour_returns)} episodes")
    print(f"deployed policy over ROS 2:           return      {d:7.1f}  (normalised {normalized_return(TASK, d):5.1f})")
    print(f"same ONNX model, in-process eval:     mean return {offline['mean_return']:7.1f}  "
          f"(normalised {offline['normalized_return']:5.1f}); from the sim's first start states: "
          + ", ".join(f"{r:.1f}" for r in offline["returns"]))
    print("\nartifacts:")
    for name, path in [("behaviour dataset", behaviour), ("training run", run_dir),
                       ("learning curves", run_dir / "learning_curves.png"), ("ONNX policy", policy),
                       ("deployed rollout", deployed), ("node logs", OUT / "logs")]:
        print(f"  {name:<18} {path}")


if __name__ == "__main__":
    run()
