"""Synthetic experience from a trained generator (trajectory diffusion or world model).

Generated windows / rollouts go either to disk, as an episode-store dataset (one episode per
window or rollout, source "synthetic", the generator and its settings in the `generator`
attribute, actions in robot units like a recording's) that can be inspected and validated in
MuJoCo like any recording, or straight into flat transition arrays for an agent's synthetic
buffer (actions normalised into [-1, 1], as the agents' real batches).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np

from robot_stack.action_space import ActionSpace
from robot_stack.data import EpisodeStore, standard_keys
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.edm import DiffusionGenerator
from robot_stack.learn.guidance import GuidanceConfig, PolicyGuidance
from robot_stack.learn.trajectories import windows_to_transitions
from robot_stack.learn.world_model import WorldModel

Generator = DiffusionGenerator | WorldModel
GENERATOR_KINDS = {DiffusionGenerator.kind: DiffusionGenerator, WorldModel.kind: WorldModel}


def load_generator(directory: str | Path) -> Generator:
    """Load a generator saved by fit_diffusion / fit_world_model (config.json + weights.pt)."""
    d = Path(directory)
    config, weights = d / "config.json", d / "weights.pt"
    if not config.is_file() or not weights.is_file():
        raise ConfigError(f"{d} is not a generator directory (needs config.json and weights.pt)")
    try:
        meta = json.loads(config.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{config}: not valid JSON ({e})") from e
    kind = meta.get("kind")
    if kind not in GENERATOR_KINDS:
        raise ConfigError(f"{config}: unknown generator kind {kind!r} (known: {sorted(GENERATOR_KINDS)})")
    try:
        return GENERATOR_KINDS[kind].from_meta(meta, weights)
    except KeyError as e:  # e.g. "action_space", which generators fitted before it existed lack
        raise ConfigError(f"{config}: no {e} entry; fit this generator again") from None


def _dims(generator: Generator) -> tuple[int, int]:
    if isinstance(generator, DiffusionGenerator):
        return generator.layout.obs_dim, generator.layout.act_dim
    return generator.obs_dim, generator.act_dim


def open_source_dataset(generator: Generator, dataset: str | Path | None = None):
    """The dataset a generator was trained on (or `dataset`), checked against its shapes."""
    path = dataset or generator.source.get("path")
    if path is None:
        raise DatasetError("generator records no source dataset; pass dataset=PATH")
    try:
        store = EpisodeStore.open(str(path), mode="r")
    except DatasetError as e:
        raise DatasetError(f"cannot open the generator's source dataset {path}: {e}") from e
    obs_dim, act_dim = _dims(generator)
    got = (store.keys["observation"].shape, store.keys["action"].shape)
    if got != ((obs_dim,), (act_dim,)):
        raise DatasetError(
            f"dataset {path} has observation/action shapes {got[0]}/{got[1]} but the generator "
            f"was trained on ({obs_dim},)/({act_dim},)"
        )
    if ActionSpace.of_store(store).to_dict() != generator.action_space.to_dict():
        raise DatasetError(f"dataset {path} has action bounds {ActionSpace.of_store(store).to_dict()} "
                           f"but the generator was trained on {generator.action_space.to_dict()}")
    return store


def _action_fn(policy: Any) -> Callable[[np.ndarray], np.ndarray]:
    if policy is None:
        raise ConfigError("world-model rollouts need a policy (obs -> action)")
    fn = getattr(policy, "act", policy)
    if not callable(fn):
        raise ConfigError("world-model policy must be callable obs -> action or have an act(obs) method")
    return fn


def generate_steps(generator: Generator, n_episodes: int, policy: Any = None,
                   guidance: GuidanceConfig | None = None, seed: int = 0,
                   start_states: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Generate n_episodes windows/rollouts as per-step arrays (N, L, ...) plus their settings.

    Diffusion: guided by `policy` (an object with log_prob) when given and guidance.lam != 0.
    World model: rollouts of `policy` (callable obs -> action, or an object with act) from
    `start_states`, drawn from the source dataset when not given. Policies, like the agents'
    actors, take and give actions normalised into [-1, 1]; so are the returned actions.
    """
    if n_episodes < 1:
        raise ConfigError(f"number of episodes to generate must be >= 1, got {n_episodes}")
    if isinstance(generator, DiffusionGenerator):
        guidance = guidance or GuidanceConfig(lam=0.0)
        if guidance.lam != 0.0 and policy is None:
            raise ConfigError(f"guidance lambda {guidance.lam} needs a policy to guide with")
        guide = PolicyGuidance(policy, generator.layout, generator.normalizer, guidance) \
            if guidance.lam != 0.0 else None
        steps = generator.sample_decoded(n_episodes, guide=guide, seed=seed)
        settings = {"sample_steps": generator.cfg.sample_steps, "horizon": generator.cfg.horizon,
                    "guidance": guidance.to_dict(), "seed": seed}
        return steps, settings
    act = _action_fn(policy)
    if start_states is None:
        store = open_source_dataset(generator)
        obs = store.read("observation")
        start_states = obs[np.random.default_rng(seed).integers(len(obs), size=n_episodes)]
    steps = generator.rollout(act, start_states[:n_episodes], seed=seed)
    settings = {"rollout_horizon": generator.cfg.rollout_horizon, "mopo_lambda": generator.cfg.mopo_lambda,
                "elites": generator.elites, "seed": seed}
    return steps, settings


def synthetic_transitions(generator: Generator, n_episodes: int, policy: Any = None,
                          guidance: GuidanceConfig | None = None, seed: int = 0,
                          start_states: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Flat transitions (observations, actions, rewards, next_observations, terminals) for an
    agent's synthetic buffer, without going through disk."""
    steps, _ = generate_steps(generator, n_episodes, policy, guidance, seed, start_states)
    return windows_to_transitions(steps)


def write_synthetic_dataset(out: str | Path, steps: dict[str, np.ndarray], *, task: str, robot: dict,
                            generator_attrs: dict, action_space: ActionSpace):
    """Write per-step arrays (N, L, ...), actions in [-1, 1], as N synthetic episodes of a new
    episode store, actions mapped to robot units with `action_space`.

    Returns the new store opened read-only."""
    n, length, obs_dim = steps["observation"].shape
    act_dim = steps["action"].shape[-1]
    rate = float(robot.get("control_rate_hz") or 1.0)
    store = EpisodeStore.create(str(out), standard_keys(obs_dim, act_dim), task=task, robot=robot,
                                generator=generator_attrs, planned_episodes=n)
    timestamp = np.arange(length, dtype=np.float64) / rate
    with store:
        for i in range(n):
            store.append_episode({
                "observation": steps["observation"][i],
                "action": action_space.to_robot(steps["action"][i]).astype(np.float32),
                "reward": steps["reward"][i],
                "terminal": steps["terminal"][i],
                "timestamp": timestamp,
            }, source="synthetic")
    return EpisodeStore.open(str(out), mode="r")


def generate(generator: Generator, policy: Any = None, guidance: GuidanceConfig | None = None,
             episodes: int = 256, out: str | Path | None = None, seed: int = 0,
             dataset: str | Path | None = None, policy_name: str | None = None):
    """Generate `episodes` windows/rollouts and write them to the dataset `out`.

    The task and robot description come from the generator's source dataset (or `dataset`).
    Returns the new dataset opened read-only.
    """
    if out is None:
        raise ConfigError("generate needs an output dataset path")
    source = open_source_dataset(generator, dataset)
    start_states = None
    if isinstance(generator, WorldModel):
        obs = source.read("observation")
        start_states = obs[np.random.default_rng(seed).integers(len(obs), size=episodes)]
    steps, settings = generate_steps(generator, episodes, policy, guidance, seed, start_states)
    attrs = {"kind": generator.kind, "settings": settings, "policy": policy_name,
             "source_dataset": {"path": str(dataset or generator.source.get("path")),
                                "fingerprint": generator.source.get("fingerprint")}}
    return write_synthetic_dataset(out, steps, task=source.task, robot=source.robot, generator_attrs=attrs,
                                   action_space=generator.action_space)
