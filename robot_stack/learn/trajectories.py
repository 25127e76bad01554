"""Trajectory windows for the diffusion generator: windowing, encoding and decoding.

A step is encoded as the row [s_t, atanh(clip(a_t, -0.999, 0.999)), r_t, terminal_t], with a_t
the action normalised into [-1, 1] (ActionSpace) and r_t, terminal_t the labels the trainer
uses (rewards.step_rewards), and every channel is z-scored with dataset statistics. A window of
H consecutive steps from one episode is one training item; windows never cross an episode
boundary. Decoding reverses the encoding (tanh on actions, which stay normalised; terminals
thresholded at 0.5) and turns a window of L steps into L-1 transitions with s' = s_{t+1}.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from robot_stack.action_space import ActionSpace
from robot_stack.errors import ConfigError, DatasetError
from robot_stack.learn.rewards import RewardFn, step_rewards

ACTION_CLIP = 0.999


@dataclass(frozen=True)
class TrajectoryLayout:
    """Column layout of an encoded step row."""

    obs_dim: int
    act_dim: int

    @property
    def channels(self) -> int:
        return self.obs_dim + self.act_dim + 2

    @property
    def obs(self) -> slice:
        return slice(0, self.obs_dim)

    @property
    def action(self) -> slice:
        return slice(self.obs_dim, self.obs_dim + self.act_dim)

    @property
    def reward(self) -> int:
        return self.obs_dim + self.act_dim

    @property
    def terminal(self) -> int:
        return self.obs_dim + self.act_dim + 1


@dataclass
class ChannelNormalizer:
    """Per-channel z-scoring of encoded rows.

    A channel that is constant in the data (e.g. the terminal flag of a task that never ends)
    divides by 1 when normalising and decodes to its constant: generated noise in it is
    meaningless and must not turn into, say, spurious terminals.
    """

    mean: np.ndarray  # (C,) float64
    std: np.ndarray  # (C,) float64, 0 for constant channels

    @classmethod
    def fit(cls, rows: np.ndarray) -> "ChannelNormalizer":
        std = rows.std(axis=0, dtype=np.float64)
        return cls(mean=rows.mean(axis=0, dtype=np.float64), std=np.where(std < 1e-6, 0.0, std))

    def normalize(self, rows: np.ndarray) -> np.ndarray:
        return ((rows - self.mean) / np.where(self.std == 0.0, 1.0, self.std)).astype(np.float32)

    def unnormalize(self, rows: np.ndarray) -> np.ndarray:
        return rows * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "ChannelNormalizer":
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), std=np.asarray(d["std"], dtype=np.float64))


def encode_rows(observation: np.ndarray, action: np.ndarray, reward: np.ndarray,
                terminal: np.ndarray) -> np.ndarray:
    """Raw (un-normalised) rows (T, obs_dim + act_dim + 2) float64 for T steps; actions in [-1, 1]."""
    if not (len(observation) == len(action) == len(reward) == len(terminal)):
        raise DatasetError(
            f"step arrays differ in length: observation {len(observation)}, action {len(action)}, "
            f"reward {len(reward)}, terminal {len(terminal)}"
        )
    pre_tanh = np.arctanh(np.clip(np.asarray(action, dtype=np.float64), -ACTION_CLIP, ACTION_CLIP))
    return np.concatenate([
        np.asarray(observation, dtype=np.float64).reshape(len(observation), -1),
        pre_tanh.reshape(len(action), -1),
        np.asarray(reward, dtype=np.float64).reshape(-1, 1),
        np.asarray(terminal, dtype=np.float64).reshape(-1, 1),
    ], axis=1)


def window_starts(episode_ends: np.ndarray, horizon: int, stride: int) -> np.ndarray:
    """Global start indices of every window of `horizon` steps that lies inside one episode.

    episode_ends is the store's cumulative end index per episode. Episodes shorter than the
    horizon contribute no window.
    """
    if horizon < 2 or stride < 1:
        raise ConfigError(f"window horizon must be >= 2 and stride >= 1, got {horizon}, {stride}")
    ends = np.asarray(episode_ends, dtype=np.int64)
    begins = np.concatenate([[0], ends[:-1]])
    starts = [np.arange(b, e - horizon + 1, stride, dtype=np.int64) for b, e in zip(begins, ends)]
    return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)


def dataset_fingerprint(store) -> str:
    """Short hash of a dataset's episode layout and statistics, to tell datasets apart."""
    h = hashlib.sha256()
    h.update(np.asarray(store.episode_ends, dtype=np.int64).tobytes())
    stats = store.stats()
    for key in ("observation", "action", "reward"):
        if key in stats:  # recordings without a reward signal have no `reward` key
            h.update(np.asarray(stats[key]["mean"], dtype=np.float64).tobytes())
    return h.hexdigest()[:16]


@dataclass
class WindowDataset:
    """Normalised windows (N, H, C) float32 with the layout and normaliser that encode them."""

    windows: np.ndarray
    layout: TrajectoryLayout
    normalizer: ChannelNormalizer
    action_space: ActionSpace  # the dataset's action bounds, for decoding to robot units
    reward_source: str         # what labelled the reward channel (StepRewards.source)


def load_windows(store, horizon: int = 32, stride: int = 8,
                 normalizer: ChannelNormalizer | None = None,
                 reward: str | RewardFn | None = None) -> WindowDataset:
    """Encode every step of an episode store and cut it into normalised windows.

    `reward` chooses the reward channel, as for the agents (rewards.step_rewards). The
    normaliser is fitted on all committed steps unless one is given (a loaded generator reuses
    the statistics of the dataset it was trained on).
    """
    for key in ("observation", "action", "terminal"):
        if key not in store.keys:
            raise DatasetError(f"dataset has no '{key}' key; the diffusion generator needs it")
    observation = store.read("observation")
    labels = step_rewards(store, reward)
    rows = encode_rows(observation, ActionSpace.of_store(store).normalize(store.read("action")),
                       labels.reward, labels.terminal)
    layout = TrajectoryLayout(obs_dim=observation.shape[1], act_dim=rows.shape[1] - observation.shape[1] - 2)
    starts = window_starts(store.episode_ends, horizon, stride)
    if len(starts) == 0:
        raise DatasetError(
            f"dataset has no episode with at least {horizon} steps; lower the window horizon"
        )
    normalizer = normalizer or ChannelNormalizer.fit(rows)
    if normalizer.mean.shape != (layout.channels,):
        raise DatasetError(
            f"dataset rows have {layout.channels} channels but the generator was trained on "
            f"{normalizer.mean.shape[0]}"
        )
    normalized = normalizer.normalize(rows)
    windows = normalized[starts[:, None] + np.arange(horizon)[None, :]]
    return WindowDataset(windows=windows, layout=layout, normalizer=normalizer,
                         action_space=ActionSpace.of_store(store), reward_source=labels.source)


def decode_windows(windows: np.ndarray, layout: TrajectoryLayout,
                   normalizer: ChannelNormalizer) -> dict[str, np.ndarray]:
    """Normalised windows (N, L, C) -> per-step arrays (N, L, ...): observations and rewards in
    the dataset's units, actions in [-1, 1] (ActionSpace.to_robot gives robot units)."""
    if windows.shape[-1] != layout.channels:
        raise ConfigError(f"windows have {windows.shape[-1]} channels, layout expects {layout.channels}")
    rows = normalizer.unnormalize(np.asarray(windows, dtype=np.float64))
    return {
        "observation": rows[..., layout.obs].astype(np.float32),
        "action": np.tanh(rows[..., layout.action]).astype(np.float32),
        "reward": rows[..., layout.reward].astype(np.float32),
        "terminal": rows[..., layout.terminal] > 0.5,
    }


def windows_to_transitions(steps: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-step arrays (N, L, ...) -> flat transitions, L-1 per window with s' = s_{t+1}.

    A window that reaches a terminal ends there: its later steps would continue past the end
    of an episode, so those transitions are dropped.
    """
    terminal = steps["terminal"][:, :-1]
    after_terminal = np.cumsum(terminal, axis=1) - terminal > 0
    keep = ~after_terminal
    return {
        "observations": steps["observation"][:, :-1][keep],
        "actions": steps["action"][:, :-1][keep],
        "rewards": steps["reward"][:, :-1][keep],
        "next_observations": steps["observation"][:, 1:][keep],
        "terminals": terminal[keep],
    }
