"""Autoregressive world-model baseline (MBPO / MOPO style) for comparison with PGD.

An ensemble of Gaussian MLPs predicts (delta s, r) from (s, a) with a learned, softly bounded
log-variance. All members run in one batched forward pass. Members train on their own random
batches, stop early on a hold-out split, and the members best on that split are the elites used
for rollouts. Rollouts start from dataset states and follow a given policy; MOPO subtracts
lambda * (max over elites of the predicted std's norm) from the reward.

Actions are normalised into [-1, 1] (ActionSpace), as the agents' are; rewards are the labels
the trainer uses (rewards.step_rewards). The tasks here never terminate, so the model does not
learn a termination function: rolled-out terminals are always False.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from robot_stack.action_space import ActionSpace
from robot_stack.data import EpisodeStore
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.files import load_torch_file
from robot_stack.learn.nets import VectorizedLinear
from robot_stack.learn.replay import TransitionBuffer
from robot_stack.learn.rewards import RewardFn
from robot_stack.learn.trajectories import dataset_fingerprint


@dataclass
class WorldModelConfig:
    ensemble_size: int = 7
    n_elites: int = 5
    hidden: int = 200
    n_layers: int = 4
    lr: float = 1e-3
    weight_decay: float = 5e-5
    batch_size: int = 256
    holdout_fraction: float = 0.1
    max_holdout: int = 5000
    patience: int = 5  # epochs without a >1% hold-out improvement of any member before stopping
    max_epochs: int = 100
    max_steps_per_epoch: int = 1000  # caps an epoch on large datasets (CPU budget)
    rollout_horizon: int = 5
    mopo_lambda: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        if not 1 <= self.n_elites <= self.ensemble_size:
            raise ConfigError(f"need 1 <= n_elites <= ensemble_size, got {self.n_elites}, {self.ensemble_size}")
        if not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigError(f"holdout_fraction must be in (0, 1), got {self.holdout_fraction}")
        if min(self.hidden, self.n_layers, self.batch_size, self.max_epochs, self.rollout_horizon) < 1:
            raise ConfigError("hidden, n_layers, batch_size, max_epochs, rollout_horizon must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "WorldModelConfig":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ConfigError(f"unknown world-model config keys: {sorted(unknown)}")
        return cls(**d)


class GaussianEnsemble(nn.Module):
    """(E, B, in) normalised inputs -> mean and log-variance (E, B, out) of normalised targets."""

    def __init__(self, n_members: int, d_in: int, d_out: int, hidden: int, n_layers: int):
        super().__init__()
        dims = [d_in] + [hidden] * n_layers
        self.hidden = nn.ModuleList(VectorizedLinear(a, b, n_members) for a, b in zip(dims[:-1], dims[1:]))
        self.head = VectorizedLinear(hidden, 2 * d_out, n_members)
        # Learned bounds keep the log-variance from collapsing or exploding away from the data.
        self.max_logvar = nn.Parameter(torch.full((d_out,), 0.5))
        self.min_logvar = nn.Parameter(torch.full((d_out,), -10.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.hidden:
            x = F.silu(layer(x))
        mean, logvar = self.head(x).chunk(2, dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean, logvar


def store_transitions(store, reward: str | RewardFn | None = None) -> dict[str, np.ndarray]:
    """The dataset's transitions as numpy arrays, built like the agents' replay buffer."""
    return buffer_transitions(TransitionBuffer.from_store(store, reward))


def buffer_transitions(buffer: TransitionBuffer) -> dict[str, np.ndarray]:
    return {name: value.numpy() for name, value in buffer.all()._asdict().items() if name != "terminals"}


class WorldModel:
    """A trained ensemble with its normalisation and elite set; the 'world_model' generator."""

    kind = "world_model"

    def __init__(self, cfg: WorldModelConfig, obs_dim: int, act_dim: int, stats: dict[str, np.ndarray],
                 action_space: ActionSpace, source: dict | None = None):
        cfg.validate()
        self.cfg = cfg
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.action_space = action_space  # its actions are normalised with these bounds
        self.stats = {k: np.asarray(v, dtype=np.float32) for k, v in stats.items()}
        self.source = source or {}
        self.net = GaussianEnsemble(cfg.ensemble_size, obs_dim + act_dim, obs_dim + 1, cfg.hidden, cfg.n_layers)
        self.elites = list(range(cfg.n_elites))
        self._t = {k: torch.from_numpy(v) for k, v in self.stats.items()}

    @staticmethod
    def fit_stats(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.concatenate([data["observations"], data["actions"]], axis=1)
        y = np.concatenate([data["next_observations"] - data["observations"], data["rewards"][:, None]], axis=1)
        return {"in_mean": x.mean(0), "in_std": np.maximum(x.std(0), 1e-6),
                "out_mean": y.mean(0), "out_std": np.maximum(y.std(0), 1e-6)}

    def _inputs(self, obs: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return (torch.cat([obs, action], dim=-1) - self._t["in_mean"]) / self._t["in_std"]

    def _targets(self, obs, action, reward, next_obs) -> torch.Tensor:
        y = torch.cat([next_obs - obs, reward[:, None]], dim=-1)
        return (y - self._t["out_mean"]) / self._t["out_std"]

    @torch.no_grad()
    def predict(self, obs: np.ndarray, action: np.ndarray, members: list[int] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Mean next state, mean reward and output std (in env units) per member: (M, N, ...)."""
        members = self.elites if members is None else members
        x = self._inputs(torch.as_tensor(obs, dtype=torch.float32), torch.as_tensor(action, dtype=torch.float32))
        mean, logvar = self.net(x.expand(self.cfg.ensemble_size, *x.shape))
        mean = mean[members] * self._t["out_std"] + self._t["out_mean"]
        std = (0.5 * logvar[members]).exp() * self._t["out_std"]
        next_obs = torch.as_tensor(obs, dtype=torch.float32) + mean[..., : self.obs_dim]
        return next_obs.numpy(), mean[..., self.obs_dim].numpy(), std.numpy()

    def rollout(self, policy: Callable[[np.ndarray], np.ndarray], start_obs: np.ndarray, horizon: int | None = None,
                mopo_lambda: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """Roll the policy out in the model from each start state.

        Returns per-step arrays (N, horizon + 1, ...) like an episode store's rows: the last row
        holds the final state with the policy's action there, so the rows give `horizon`
        transitions (s' = s_{t+1}). Each step samples the next state and reward from one random
        elite's Gaussian; `uncertainty` is the MOPO max-over-elites std norm, already subtracted
        (times mopo_lambda) from `reward`.
        """
        horizon = horizon or self.cfg.rollout_horizon
        lam = self.cfg.mopo_lambda if mopo_lambda is None else mopo_lambda
        rng = np.random.default_rng(seed)
        obs = np.asarray(start_obs, dtype=np.float32)
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ConfigError(f"world model expects start states (N, {self.obs_dim}), got {obs.shape}")
        steps = {"observation": [], "action": [], "reward": [], "uncertainty": []}
        for _ in range(horizon + 1):
            action = np.asarray(policy(obs), dtype=np.float32)
            if action.shape != (len(obs), self.act_dim):
                raise ConfigError(f"policy returned actions {action.shape}, world model needs ({len(obs)}, {self.act_dim})")
            action = np.clip(action, -1.0, 1.0)
            next_mean, reward_mean, std = self.predict(obs, action)
            member = rng.integers(len(self.elites), size=len(obs))
            rows = np.arange(len(obs))
            noise = rng.standard_normal(std.shape[1:]).astype(np.float32) * std[member, rows]
            uncertainty = np.linalg.norm(std, axis=-1).max(axis=0)
            steps["observation"].append(obs)
            steps["action"].append(action)
            steps["reward"].append(reward_mean[member, rows] + noise[:, -1] - lam * uncertainty)
            steps["uncertainty"].append(uncertainty)
            obs = next_mean[member, rows] + noise[:, :-1]
        out = {k: np.stack(v, axis=1).astype(np.float32) for k, v in steps.items()}
        out["terminal"] = np.zeros(out["reward"].shape, dtype=bool)
        return out

    def save(self, out_dir: str | Path) -> Path:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"kind": self.kind, "config": self.cfg.to_dict(), "obs_dim": self.obs_dim, "act_dim": self.act_dim,
                "stats": {k: v.tolist() for k, v in self.stats.items()}, "elites": self.elites,
                "action_space": self.action_space.to_dict(), "source": self.source}
        torch.save(self.net.state_dict(), out / "weights.pt")
        (out / "config.json").write_text(json.dumps(meta, indent=2))
        return out

    @classmethod
    def from_meta(cls, meta: dict, weights_path: Path) -> "WorldModel":
        model = cls(WorldModelConfig.from_dict(meta["config"]), meta["obs_dim"], meta["act_dim"],
                    meta["stats"],
                    ActionSpace(meta["action_space"]["action_low"], meta["action_space"]["action_high"]),
                    meta.get("source"))
        model.net.load_state_dict(load_torch_file(weights_path, "the generator's weights file",
                                                  map_location="cpu", weights_only=True))
        model.elites = list(meta["elites"])
        return model


def train_world_model(data: dict[str, np.ndarray], action_space: ActionSpace,
                      cfg: WorldModelConfig | None = None, source: dict | None = None,
                      log: Callable[[str], None] | None = None) -> WorldModel:
    """Fit the ensemble on flat transitions (actions normalised with `action_space`) with
    hold-out early stopping and elite selection."""
    cfg = cfg or WorldModelConfig()
    cfg.validate()
    n = len(data["observations"])
    n_holdout = min(int(n * cfg.holdout_fraction), cfg.max_holdout)
    if n_holdout < 1 or n - n_holdout < 1:
        raise DatasetError(f"world model needs more transitions to split off a hold-out set (got {n})")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    perm = rng.permutation(n)
    train_idx, hold_idx = perm[n_holdout:], perm[:n_holdout]
    model = WorldModel(cfg, data["observations"].shape[1], data["actions"].shape[1],
                       WorldModel.fit_stats({k: v[train_idx] for k, v in data.items()}), action_space, source)
    t = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in data.items()}
    x_all = model._inputs(t["observations"], t["actions"])
    y_all = model._targets(t["observations"], t["actions"], t["rewards"], t["next_observations"])
    x_train, y_train = x_all[train_idx], y_all[train_idx]
    x_hold, y_hold = x_all[hold_idx], y_all[hold_idx]
    net = model.net
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    e = cfg.ensemble_size

    def holdout_mse() -> torch.Tensor:
        with torch.no_grad():
            mean, _ = net(x_hold.expand(e, *x_hold.shape))
            return ((mean - y_hold) ** 2).mean(dim=(1, 2))

    best = holdout_mse()
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    epochs_since_update, t0 = 0, time.perf_counter()
    steps_per_epoch = min(math.ceil(len(x_train) / cfg.batch_size), cfg.max_steps_per_epoch)
    for epoch in range(cfg.max_epochs):
        net.train()
        for _ in range(steps_per_epoch):
            # Every member sees its own random batch, which keeps the members diverse.
            idx = torch.randint(len(x_train), (e, cfg.batch_size))
            mean, logvar = net(x_train[idx])
            nll = ((mean - y_train[idx]) ** 2 * torch.exp(-logvar) + logvar).mean(dim=(1, 2)).sum()
            loss = nll + 0.01 * (net.max_logvar.sum() - net.min_logvar.sum())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        mse = holdout_mse()
        improved = (best - mse) / best > 0.01
        if improved.any():
            for name, value in net.state_dict().items():
                if name.startswith(("hidden.", "head.")):  # per-member: keep each member's best
                    best_state[name][improved] = value[improved]
                else:
                    best_state[name] = value.clone()
            best = torch.where(improved, mse, best)
            epochs_since_update = 0
        else:
            epochs_since_update += 1
        if log:
            log(f"world model epoch {epoch + 1}: hold-out mse {mse.numpy().round(4)} "
                f"({time.perf_counter() - t0:.0f}s)")
        if epochs_since_update > cfg.patience:
            break
    net.load_state_dict(best_state)
    model.elites = torch.argsort(best)[: cfg.n_elites].tolist()
    model.source = {**model.source, "holdout_mse": best.tolist(), "epochs": epoch + 1}
    net.eval()
    return model


def fit_world_model(dataset_path: str | Path, out_dir: str | Path | None,
                    cfg: WorldModelConfig | None = None, log: Callable[[str], None] | None = None,
                    reward: str | RewardFn | None = None) -> WorldModel:
    """Train the ensemble on a dataset's transitions; saves it to out_dir when given.

    `reward` labels the reward head's targets as the trainer does (rewards.step_rewards)."""
    with EpisodeStore.open(str(dataset_path), mode="r") as store:
        buffer = TransitionBuffer.from_store(store, reward)
        source = {"path": str(dataset_path), "fingerprint": dataset_fingerprint(store), "task": store.task,
                  "reward": buffer.reward_source}
        action_space = ActionSpace.of_store(store)
    model = train_world_model(buffer_transitions(buffer), action_space, cfg, source, log)
    if out_dir is not None:
        model.save(out_dir)
    return model
