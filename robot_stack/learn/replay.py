"""Transition data for the offline agents: load an episode store, sample reproducible batches.

A transition is (s_t, a_t, r_t, s_{t+1}, terminal_t), with s_{t+1} the next row of the same
episode. The last step of an episode has no successor and is dropped, unless its terminal flag
is set: then s_{t+1} is never used (targets are masked by 1 - terminal), so the step is kept
with next_observation = observation and the terminal signal is not lost.

Batches come from ReplaySampler, which draws indices with its own torch.Generator: the stream
depends only on the seed, and state_dict()/load_state_dict() resume it exactly.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from robot_stack.action_space import ActionSpace
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.rewards import RewardFn, step_rewards


class Batch(NamedTuple):
    observations: torch.Tensor       # (B, obs_dim) float32, un-normalised
    actions: torch.Tensor            # (B, act_dim) normalised into [-1, 1] (ActionSpace)
    rewards: torch.Tensor            # (B,)
    next_observations: torch.Tensor  # (B, obs_dim)
    terminals: torch.Tensor          # (B,) float32, 1.0 where the episode ended in a terminal state


class TransitionBuffer:
    """N transitions as one packed float32 tensor (row = [s, a, r, s', terminal]).

    Packing lets a batch be gathered with one index operation instead of five.
    """

    def __init__(self, observations, actions, rewards, next_observations, terminals,
                 device: str | torch.device = "cpu", episode_returns: np.ndarray | None = None,
                 reward_source: str | None = None):
        columns = [np.asarray(observations, np.float32), np.asarray(actions, np.float32),
                   np.asarray(rewards, np.float32), np.asarray(next_observations, np.float32),
                   np.asarray(terminals, np.float32)]
        obs, act, rew, next_obs, term = columns
        n = obs.shape[0]
        if obs.ndim != 2 or act.ndim != 2 or next_obs.shape != obs.shape:
            raise DatasetError(f"observations {obs.shape}, next_observations {next_obs.shape} and "
                               f"actions {act.shape} must be (N, dim) arrays with the same N")
        if act.shape[0] != n or rew.shape != (n,) or term.shape != (n,):
            raise DatasetError(f"expected {n} actions, rewards and terminals, got shapes "
                               f"{act.shape}, {rew.shape}, {term.shape}")
        for name, column in zip(Batch._fields, columns):
            if not np.isfinite(column).all():
                raise DatasetError(f"transition {name} contain NaN or inf values")
        self.obs_dim, self.act_dim = obs.shape[1], act.shape[1]
        self.data = torch.from_numpy(
            np.concatenate([obs, act, rew[:, None], next_obs, term[:, None]], axis=1)).to(device)
        # Sum of the kept rewards per source episode (CORL's reward scaling uses their range).
        self.episode_returns = episode_returns
        self.reward_source = reward_source  # StepRewards.source of data from a store

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def device(self) -> torch.device:
        return self.data.device

    def unpack(self, rows: torch.Tensor) -> Batch:
        obs, act, rew, next_obs, term = torch.split(
            rows, [self.obs_dim, self.act_dim, 1, self.obs_dim, 1], dim=-1)
        return Batch(obs, act, rew.squeeze(-1), next_obs, term.squeeze(-1))

    def all(self) -> Batch:
        return self.unpack(self.data)

    @classmethod
    def from_store(cls, store, reward: str | RewardFn | None = None,
                   device: str | torch.device = "cpu") -> TransitionBuffer:
        """Transitions of every committed episode of an EpisodeStore.

        Actions are normalised into [-1, 1] with the dataset's action bounds (ActionSpace).
        `reward` chooses the rewards and terminals (rewards.step_rewards: the stored ones by
        default, "success", or a function of (obs, act, next_obs)).
        """
        if "observation" not in store.keys:
            raise DatasetError(f"dataset has no 'observation' key (keys: {sorted(store.keys)})")
        if store.n_episodes == 0:
            raise DatasetError("dataset has no committed episodes")
        action_space = ActionSpace.of_store(store)
        ends = np.asarray(store.episode_ends, dtype=np.int64)
        n_steps = int(ends[-1])
        labels = step_rewards(store, reward)
        is_last = np.zeros(n_steps, dtype=bool)
        is_last[ends - 1] = True
        keep = ~is_last | labels.terminal
        if not keep.any():
            raise DatasetError("dataset has no transitions: every episode is a single step")
        obs = store.read("observation", 0, n_steps)
        next_obs = obs[np.where(is_last, np.arange(n_steps), np.arange(n_steps) + 1)][keep]
        act = action_space.normalize(store.read("action", 0, n_steps)[keep])
        reward, terminal = labels.reward[keep], labels.terminal[keep]
        episode_index = np.searchsorted(ends, np.flatnonzero(keep), side="right")
        episode_returns = np.bincount(episode_index, weights=reward, minlength=len(ends))
        return cls(obs[keep], act, reward, next_obs, terminal, device=device,
                   episode_returns=episode_returns, reward_source=labels.source)


class ReplaySampler:
    """Uniform minibatches from a TransitionBuffer, optionally mixed with a synthetic one."""

    def __init__(self, real: TransitionBuffer, seed: int = 0):
        self.real = real
        self.generator = torch.Generator(device=real.device)
        self.generator.manual_seed(seed)

    def sample(self, batch_size: int, synthetic: TransitionBuffer | None = None,
               synthetic_fraction: float = 0.0) -> Batch:
        """batch_size transitions; round(batch_size * synthetic_fraction) of them synthetic.

        The synthetic rows come first in the batch. PGD's reference mix is 240 of 256.
        """
        if not 0.0 <= synthetic_fraction <= 1.0:
            raise ConfigError(f"synthetic_fraction must be in [0, 1], got {synthetic_fraction}")
        n_synthetic = round(batch_size * synthetic_fraction)
        if n_synthetic == 0:
            return self.real.unpack(self._draw(self.real, batch_size))
        if synthetic is None or len(synthetic) == 0:
            raise ConfigError("synthetic_fraction > 0 needs a non-empty synthetic buffer")
        if (synthetic.obs_dim, synthetic.act_dim) != (self.real.obs_dim, self.real.act_dim):
            raise DatasetError(
                f"synthetic transitions have obs/act dims {synthetic.obs_dim}/{synthetic.act_dim}, "
                f"real ones {self.real.obs_dim}/{self.real.act_dim}")
        rows = torch.cat([self._draw(synthetic, n_synthetic),
                          self._draw(self.real, batch_size - n_synthetic)])
        return self.real.unpack(rows)

    def _draw(self, buffer: TransitionBuffer, n: int) -> torch.Tensor:
        index = torch.randint(len(buffer), (n,), generator=self.generator, device=buffer.device)
        return buffer.data.index_select(0, index)  # same rows as data[index], a faster kernel

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
