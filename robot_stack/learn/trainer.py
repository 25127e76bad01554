"""The offline trainer: an agent (TD3+BC or IQL) on real data, optionally mixed with synthetic
transitions from trajectory diffusion (unguided or policy-guided) or a world model.

A run folder holds everything a run makes and needs to continue:
    config.json       the resolved TrainConfig
    checkpoint.pt     agent, optimiser, sampler and synthetic buffer state (exact resume)
    metrics.csv       one row per log/eval point; tb/ the same as TensorBoard events
    learning_curves.png
    generator/        the generator trained at the start (when none was given)
The synthetic buffer is regenerated every `regen_every` agent steps; for PGD the first buffer
is unguided and later ones are guided by the current actor (pgd-method.md).
"""
from __future__ import annotations

import csv
import dataclasses
import gc
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from robot_stack.action_space import ActionSpace
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.files import load_torch_file
from robot_stack.learn.rewards import first_line

ALGOS = ("td3bc", "iql")
SYNTHETIC_KINDS = ("none", "diffusion", "pgd", "world-model")


@dataclass
class TrainConfig:
    dataset: str
    out: str
    algo: str = "td3bc"
    synthetic: str = "none"          # none | diffusion (unguided) | pgd | world-model
    steps: int = 100_000
    seed: int = 0
    eval_task: str | None = None     # default: the dataset's task when it is a sim task
    eval_every: int = 10_000
    eval_episodes: int = 5
    log_every: int = 1_000
    checkpoint_every: int = 10_000
    batch_size: int = 256
    reward: str | None = None        # "success" or "module:function" computing rewards (rewards.py)
    # Overrides of the agent's hyperparameters (TD3BCConfig / IQLConfig fields), e.g. {"alpha": 10}
    agent_params: dict = field(default_factory=dict)
    # Synthetic data (pgd-method.md; the reference sizes are shrunk for a CPU).
    synthetic_fraction: float = 0.5  # share of each batch (reference: 240/256)
    regen_every: int = 10_000        # agent steps between buffer regenerations
    synthetic_size: int = 256        # windows (diffusion) or rollouts (world model) per buffer
    guidance: float = 1.0            # lambda of policy guidance (pgd only)
    guidance_normalize: bool = False
    horizon: int = 32                # diffusion window length
    sample_steps: int = 32           # EDM sampler steps
    rollout_horizon: int = 5         # world-model rollout length
    generator: str | None = None     # a trained generator directory; else one is trained here
    generator_steps: int = 5_000     # diffusion training steps when training one here
    device: str = "cpu"
    # torch intra-op threads. One by default: on 2 shared cores a second thread mostly waits for
    # a busy core (measured up to 10x slower); raise it on a machine with idle cores.
    threads: int = 1
    # torch.compile the agent's loss functions: ~15% more updates/s, ~10 s to compile, needs a
    # C++ compiler on a CPU (nets.OfflineAgent.compile_losses).
    compile: bool = False

    def validate(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"unknown --algo {self.algo!r}: choose from {', '.join(ALGOS)}")
        if self.synthetic not in SYNTHETIC_KINDS:
            raise ConfigError(f"unknown --synthetic {self.synthetic!r}: choose from {', '.join(SYNTHETIC_KINDS)}")
        if self.steps < 1 or self.batch_size < 1 or self.threads < 1:
            raise ConfigError("--steps, --batch-size and --threads must be >= 1")
        if min(self.eval_every, self.log_every, self.checkpoint_every, self.regen_every) < 1:
            raise ConfigError("eval, log, checkpoint and regeneration periods must be >= 1")
        if not 0.0 <= self.synthetic_fraction < 1.0:
            raise ConfigError(f"--synthetic-fraction must be in [0, 1), got {self.synthetic_fraction}")
        if self.synthetic != "none" and self.synthetic_size < 1:
            raise ConfigError("--synthetic-size must be >= 1")
        if self.seed < 0:  # numpy's generators refuse negative seeds, deep in a run
            raise ConfigError(f"--seed must be a whole number >= 0, got {self.seed}")
        from robot_stack.learn.guidance import GuidanceConfig

        GuidanceConfig(lam=self.guidance)  # refused now, not at the first guided regeneration
        settable = agent_param_types(self.algo)
        unknown = sorted(set(self.agent_params) - set(settable))
        if unknown:
            raise ConfigError(f"unknown --agent-param {', '.join(unknown)} for {self.algo}: choose from "
                              f"{', '.join(settable)}")


def check_device(device: str) -> None:
    """ConfigError unless torch can put a tensor on `device` (a CUDA device without a GPU,
    or a name torch does not know)."""
    try:
        torch.zeros(1, device=device)
    except (RuntimeError, AssertionError) as e:  # torch raises both for unusable devices
        raise ConfigError(f"--device {device!r} cannot be used here: {first_line(e)}") from None


def check_dataset_fingerprint(trained_on: dict, store, path: str) -> None:
    """ConfigError unless `store` holds the data a run was trained on (`trained_on`: its
    checkpoint's `dataset` entry), recorded from the same robot: the same steps relabelled with
    another task or robot description (other action bounds) would be mapped to other units.
    Runs saved before fingerprints (or robot descriptions) were recorded pass those checks."""
    from robot_stack.learn.trajectories import dataset_fingerprint

    expected = trained_on.get("fingerprint")
    actual = dataset_fingerprint(store)
    if expected is not None and actual != expected:
        raise ConfigError(f"dataset {path} (task {store.task}, fingerprint {actual}) is not the "
                          f"data the run was trained on ({trained_on['path']}, task "
                          f"{trained_on['task']}, fingerprint {expected})")
    robot = trained_on.get("robot")
    if store.task != trained_on["task"] or (robot is not None and store.robot != robot):
        changed = [key for key in sorted(set(store.robot) | set(robot or {}))
                   if robot is not None and store.robot.get(key) != robot.get(key)]
        raise ConfigError(f"dataset {path} holds the run's data under another description "
                          f"(task {store.task}, the run's {trained_on['task']}"
                          + (f"; robot {', '.join(changed)} differ" if changed else "")
                          + "): the run's model would be labelled and scaled for another robot")


def check_trained_on(run_dir: str | Path, store, path: str) -> None:
    """check_dataset_fingerprint against the run's checkpoint."""
    check_dataset_fingerprint(load_checkpoint(run_dir)["dataset"], store, path)


# Set by the trainer from its own options (--batch-size, --steps), not by --agent-param.
TRAINER_SET_PARAMS = ("batch_size", "max_steps")


def agent_config_class(algo: str):
    if algo == "td3bc":
        from robot_stack.learn.td3bc import TD3BCConfig

        return TD3BCConfig
    from robot_stack.learn.iql import IQLConfig

    return IQLConfig


def agent_param_types(algo: str) -> dict[str, type]:
    """The agent hyperparameters --agent-param may set, with the type of each."""
    if algo not in ALGOS:
        return {}
    defaults = agent_config_class(algo)()
    return {f.name: type(getattr(defaults, f.name)) for f in dataclasses.fields(defaults)
            if f.name not in TRAINER_SET_PARAMS}


def parse_agent_params(algo: str, assignments: list[str]) -> dict:
    """["alpha=10", "hidden_dims=64,64"] -> {"alpha": 10.0, "hidden_dims": [64, 64]}, typed
    like the agent config's fields."""
    types, params = agent_param_types(algo), {}
    for assignment in assignments:
        name, sep, text = assignment.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in types:
            raise ConfigError(f"--agent-param wants NAME=VALUE with NAME one of {', '.join(types)} "
                              f"({algo}), got {assignment!r}")
        kind = types[name]
        try:
            if kind is tuple:
                params[name] = [int(x) for x in text.split(",")]
            elif kind is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                params[name] = text.lower() in ("true", "1")
            else:
                params[name] = kind(text)
        except ValueError:
            raise ConfigError(f"--agent-param {name}: {text!r} is not a valid {kind.__name__}") from None
    return params


def agent_config(cfg: TrainConfig, buffer) -> dict:
    """The agent's hyperparameters: reference defaults, with the run's batch size and schedule,
    then the run's --agent-param overrides."""
    if cfg.algo == "td3bc":
        return {"batch_size": cfg.batch_size, **cfg.agent_params}
    from robot_stack.learn.iql import return_range_reward_scale

    returns = buffer.episode_returns
    scale = return_range_reward_scale(returns) if len(returns) > 1 and np.ptp(returns) > 0 else 1.0
    return {"batch_size": cfg.batch_size, "max_steps": cfg.steps, "reward_scale": scale,
            **cfg.agent_params}


def build_agent(algo: str, act_dim: int, obs_mean: np.ndarray, obs_std: np.ndarray, config: dict,
                seed: int = 0, device: str = "cpu"):
    if algo == "td3bc":
        from robot_stack.learn.td3bc import TD3BC as Agent
    else:
        from robot_stack.learn.iql import IQL as Agent
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    return Agent(act_dim, obs_mean, obs_std, agent_config_class(algo)(**config), seed=seed, device=device)


class SyntheticSource:
    """Owns the generator and refills the synthetic buffer with the current actor."""

    def __init__(self, cfg: TrainConfig, run_dir: Path, store, reward_source: str,
                 log: Callable[[str], None]):
        from robot_stack.learn.synthetic import load_generator

        self.cfg = cfg
        directory = Path(cfg.generator) if cfg.generator else run_dir / "generator"
        if (directory / "config.json").is_file():
            self.generator = load_generator(directory)
        elif cfg.generator:
            raise ConfigError(f"--generator {cfg.generator} is not a generator directory")
        else:
            self.generator = self._fit(directory, log)
        from robot_stack.learn.synthetic import open_source_dataset

        open_source_dataset(self.generator, cfg.dataset)  # shapes must match the training data
        learned = self.generator.source.get("reward")
        if learned != reward_source:
            raise ConfigError(f"generator {directory} learned the rewards of {learned!r}, this run trains on "
                              f"{reward_source!r}: fit one with train-generator --reward as this run's")
        self.start_states = store.read("observation")

    def _fit(self, directory: Path, log) -> object:
        cfg = self.cfg
        if cfg.synthetic == "world-model":
            from robot_stack.learn.world_model import WorldModelConfig, fit_world_model

            log("training the world-model ensemble")
            return fit_world_model(cfg.dataset, directory,
                                   WorldModelConfig(rollout_horizon=cfg.rollout_horizon, seed=cfg.seed), log,
                                   reward=cfg.reward)
        from robot_stack.learn.edm import DiffusionConfig, fit_diffusion

        log(f"training the trajectory diffusion model ({cfg.generator_steps} steps)")
        return fit_diffusion(cfg.dataset, directory,
                             DiffusionConfig(horizon=cfg.horizon, train_steps=cfg.generator_steps,
                                             sample_steps=cfg.sample_steps, seed=cfg.seed),
                             log, log_every=max(1, cfg.generator_steps // 10), reward=cfg.reward)

    def fill(self, actor, round_index: int):
        """A new TransitionBuffer; `round_index` seeds it and decides guidance (round 0: none)."""
        from robot_stack.learn.guidance import GuidanceConfig
        from robot_stack.learn.replay import TransitionBuffer
        from robot_stack.learn.synthetic import synthetic_transitions

        cfg = self.cfg
        seed = cfg.seed * 1_000_003 + round_index
        if cfg.synthetic == "world-model":
            rng = np.random.default_rng(seed)
            starts = self.start_states[rng.integers(len(self.start_states), size=cfg.synthetic_size)]
            act = lambda obs: actor_act(actor, obs)  # noqa: E731
            data = synthetic_transitions(self.generator, cfg.synthetic_size, act, seed=seed,
                                         start_states=starts)
        else:
            guided = cfg.synthetic == "pgd" and round_index > 0
            guidance = GuidanceConfig(lam=cfg.guidance if guided else 0.0, normalize=cfg.guidance_normalize)
            data = synthetic_transitions(self.generator, cfg.synthetic_size, actor if guided else None,
                                         guidance, seed=seed)
        return TransitionBuffer(data["observations"], data["actions"], data["rewards"],
                                data["next_observations"], data["terminals"], device=cfg.device)


@torch.no_grad()
def actor_act(actor, obs: np.ndarray) -> np.ndarray:
    return actor(torch.as_tensor(np.asarray(obs, np.float32))).numpy()


class MetricsLog:
    """metrics.csv (rewritten atomically per row; rows are few) and TensorBoard events."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.csv"
        self.tb = SummaryWriter(str(run_dir / "tb"))

    def write(self, step: int, values: dict[str, float]) -> None:
        self._rewrite(self.read() + [{"step": step, **values}])
        for key, value in values.items():
            self.tb.add_scalar(key, value, step)
        self.tb.flush()

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after `step`: a killed run's rows past its last checkpoint are
        logged again when the run resumes from that checkpoint."""
        self._rewrite([row for row in self.read() if row["step"] <= step])

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]

    def _rewrite(self, rows: list[dict]) -> None:
        fields = list(dict.fromkeys(k for row in rows for k in row)) or ["step"]
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.path)


def plot_learning_curves(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("critic_loss", "actor_loss", "value_loss", "normalized_return")
            if any(k in row for row in rows)]
    if not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        points = [(row["step"], row[key]) for row in rows if key in row]
        ax.plot(*zip(*points), marker="o" if key == "normalized_return" else None)
        ax.set_title(key)
        ax.set_xlabel("agent step")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # a kill mid-save leaves the previous checkpoint intact


def train(cfg: TrainConfig, resume: bool = False, progress: bool = True,
          log: Callable[[str], None] = print) -> dict:
    """Train (or continue) the run in cfg.out; returns the final metrics."""
    from tqdm import tqdm

    from robot_stack.data import EpisodeStore
    from robot_stack.learn.evaluate import evaluate_policy, is_sim_task
    from robot_stack.learn.replay import ReplaySampler, TransitionBuffer
    from robot_stack.learn.trajectories import dataset_fingerprint

    cfg.validate()
    check_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.out)
    checkpoint_path = run_dir / "checkpoint.pt"
    if not resume and checkpoint_path.exists():
        raise ConfigError(f"{run_dir} already holds a run: continue it with --resume {run_dir}, "
                          "or choose another --out")
    if resume and not checkpoint_path.exists():
        raise ConfigError(f"{run_dir} has no checkpoint to resume from (the run stopped before its "
                          "first one): run the same train command again without --resume")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))
    torch.manual_seed(cfg.seed)

    store = EpisodeStore.open(cfg.dataset, mode="r")
    if resume:  # before anything is built from the data: it must be the data of the run
        state = load_checkpoint(run_dir, cfg.device)
        check_dataset_fingerprint(state["dataset"], store, cfg.dataset)
    eval_task = cfg.eval_task or (store.task if is_sim_task(store.task) else None)
    if cfg.eval_task and not is_sim_task(cfg.eval_task):
        raise ConfigError(f"--eval-task {cfg.eval_task!r} is not a sim task")
    action_space = ActionSpace.of_store(store)
    if eval_task:
        from sim import make_task

        task = make_task(eval_task)
        task_bounds = task.action_space.to_dict()
        if task_bounds != action_space.to_dict():
            raise ConfigError(f"--eval-task {eval_task} takes actions in {task_bounds}, the dataset's "
                              f"robot in {action_space.to_dict()}")
        # Same sizes are not the same robot (cheetah and walker both observe 17 values): the
        # returns of a policy fed another body's observations would be reported as its own.
        task_layout, data_layout = (
            [(part["name"], int(part["size"])) for part in robot.get("observation_layout", [])]
            for robot in (task.robot_description(), store.robot))
        if task_layout != data_layout:
            raise ConfigError(f"--eval-task {eval_task} observes {[n for n, _ in task_layout]}, the "
                              f"dataset's robot {[n for n, _ in data_layout]}")
    buffer = TransitionBuffer.from_store(store, cfg.reward, device=cfg.device)
    obs_stats = store.stats()["observation"]
    agent = build_agent(cfg.algo, buffer.act_dim, obs_stats["mean"], obs_stats["std"],
                        agent_config(cfg, buffer), seed=cfg.seed, device=cfg.device)
    if cfg.compile:
        agent.compile_losses()
    sampler = ReplaySampler(buffer, seed=cfg.seed)
    source = SyntheticSource(cfg, run_dir, store, buffer.reward_source, log) if cfg.synthetic != "none" else None
    synthetic, regen_round, step = None, 0, 0
    if resume:
        agent.load_state_dict(state["agent"])
        sampler.load_state_dict(state["sampler"])
        step, regen_round = state["step"], state["regen_round"]
        if state["synthetic"] is not None:
            synthetic = TransitionBuffer(*[t.numpy() for t in state["synthetic"]], device=cfg.device)
        log(f"resuming {run_dir} at step {step}")
    metrics = MetricsLog(run_dir)
    metrics.truncate_after(step)
    fingerprint = dataset_fingerprint(store)

    def checkpoint() -> None:
        _save_checkpoint(checkpoint_path, {
            "agent": agent.state_dict(), "sampler": sampler.state_dict(), "step": step,
            "regen_round": regen_round, "config": dataclasses.asdict(cfg),
            "synthetic": None if synthetic is None else [t.cpu() for t in synthetic.all()],
            "dataset": {"path": cfg.dataset, "task": store.task, "n_steps": store.n_steps,
                        "fingerprint": fingerprint, "robot": store.robot},
            "dims": {"obs": buffer.obs_dim, "act": buffer.act_dim},
        })

    last_eval: dict = {}
    fraction = cfg.synthetic_fraction if source else 0.0
    bar = tqdm(total=cfg.steps, initial=step, disable=not progress, desc=f"{cfg.algo}+{cfg.synthetic}",
               unit="step", dynamic_ncols=True)
    # Everything built so far (modules, data, MuJoCo bindings) leaves the garbage collector's
    # view: its full collections walked all of it every few hundred updates (~3% of the time).
    gc.freeze()
    start = time.perf_counter()
    losses: dict[str, list] = {}
    while step < cfg.steps:
        if source and step >= regen_round * cfg.regen_every:
            t0 = time.perf_counter()
            synthetic = source.fill(agent.actor, regen_round)
            regen_round += 1
            log(f"step {step}: synthetic buffer {regen_round} ({len(synthetic)} transitions) "
                f"in {time.perf_counter() - t0:.1f} s")
        batch = sampler.sample(cfg.batch_size, synthetic, fraction)
        for key, value in agent.update(batch).items():
            losses.setdefault(key, []).append(value)
        step += 1
        bar.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            values = {k: float(torch.stack(v).mean()) for k, v in losses.items()}
            values["updates_per_s"] = cfg.log_every / max(time.perf_counter() - start, 1e-9)
            losses, start = {}, time.perf_counter()
            if eval_task and (step % cfg.eval_every == 0 or step == cfg.steps):
                # The agent acts in [-1, 1]; the task takes the robot's units.
                last_eval = evaluate_policy(lambda obs: action_space.to_robot(agent.act(obs)), eval_task,
                                            cfg.eval_episodes, seed=10_000)
                values["mean_return"] = last_eval["mean_return"]
                values["normalized_return"] = last_eval["normalized_return"]
                bar.set_postfix(norm_return=f"{last_eval['normalized_return']:.1f}")
            metrics.write(step, values)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            checkpoint()
    bar.close()
    rows = metrics.read()
    plot_learning_curves(rows, run_dir / "learning_curves.png")
    result = {"run": str(run_dir), "steps": step, **({"eval": last_eval} if last_eval else {})}
    (run_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def load_run_config(run_dir: str | Path) -> TrainConfig:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a training run (no config.json)")
    try:
        return TrainConfig(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:  # TypeError: not an object of TrainConfig's fields
        raise ConfigError(f"{path} is not a run configuration ({exc})") from None


def load_checkpoint(run_dir: str | Path, device: str = "cpu") -> dict:
    """The state a run saved in checkpoint.pt (one ConfigError when it does not load)."""
    return load_torch_file(Path(run_dir) / "checkpoint.pt", "the run's checkpoint", map_location=device,
                           weights_only=False)


def load_policy(run_dir: str | Path, action_space: ActionSpace | None = None):
    """The trained agent of a run, from its checkpoint (its actor has log_prob and act).

    `action_space`: the bounds of the robot it is to act for (a generator's, a dataset's). The
    actor's [-1, 1] means the bounds of the robot it was trained on, so a run trained with
    other bounds is refused."""
    cfg = load_run_config(run_dir)
    if not (Path(run_dir) / "checkpoint.pt").is_file():
        raise ConfigError(f"{run_dir} has no checkpoint.pt yet")
    state = load_checkpoint(run_dir)
    dims = state["dims"]
    trained = _trained_action_space(state, cfg)
    if action_space is not None and trained is not None and trained.to_dict() != action_space.to_dict():
        raise ConfigError(f"the policy of {run_dir} was trained for actions in {trained.to_dict()}, "
                          f"not {action_space.to_dict()}: its actions would mean other robot units")
    # Placeholder statistics: the actor's normaliser buffers come from the checkpoint.
    agent = build_agent(cfg.algo, dims["act"], np.zeros(dims["obs"]), np.ones(dims["obs"]),
                        state["agent"]["config"], seed=cfg.seed)
    agent.load_state_dict(state["agent"])
    return agent


def _trained_action_space(state: dict, cfg: TrainConfig) -> ActionSpace | None:
    """The action bounds of a run's training data: recorded in its checkpoint, or (runs saved
    before they were) read from its dataset; None when neither is there."""
    from robot_stack.data import EpisodeStore

    robot = state["dataset"].get("robot")
    if robot is None:
        try:
            robot = EpisodeStore.open(cfg.dataset, mode="r").robot
        except DatasetError:
            return None
    return ActionSpace.from_robot(robot, state["dims"]["act"], f"the data of run {cfg.out}")
