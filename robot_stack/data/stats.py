"""Running normalisation statistics that merge in O(new data).

Each key keeps count, mean, m2 (sum of squared deviations from the mean), min and max per element
and merges batches with Chan et al.'s parallel update. That is the count/sum/sumsq scheme with
better numerics: sumsq - sum^2/n cancels catastrophically for keys like `timestamp` in epoch
seconds (1e9 s), while the mean/m2 form stays exact to float64 rounding.

Images (uint8, H x W x C) get per-channel statistics estimated on a fixed grid of every
IMAGE_STATS_STRIDE-th pixel in both directions: exact per-pixel stats of full frames would cost
more than compressing them, and normalisation needs only per-channel values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robot_stack.data.schema import KeySpec

IMAGE_STATS_STRIDE = 8


def stat_samples(spec: KeySpec, rows: np.ndarray) -> np.ndarray:
    """The float64 samples (N, *stat_shape) that a key's statistics are computed over."""
    if spec.is_image:
        sub = rows[:, ::IMAGE_STATS_STRIDE, ::IMAGE_STATS_STRIDE, :]
        return sub.reshape(-1, spec.shape[-1]).astype(np.float64)
    return rows.astype(np.float64)


@dataclass
class RunningStats:
    count: int
    mean: np.ndarray
    m2: np.ndarray
    min: np.ndarray
    max: np.ndarray

    @classmethod
    def empty(cls, spec: KeySpec) -> RunningStats:
        shape = (spec.shape[-1],) if spec.is_image else spec.shape
        zeros = np.zeros(shape)
        return cls(0, zeros, zeros.copy(), np.full(shape, np.inf), np.full(shape, -np.inf))

    @classmethod
    def of(cls, samples: np.ndarray) -> RunningStats:
        """Statistics of float64 samples of shape (N, *stat_shape), N > 0."""
        mean = samples.mean(axis=0)
        return cls(len(samples), mean, ((samples - mean) ** 2).sum(axis=0), samples.min(axis=0),
                   samples.max(axis=0))

    def update(self, samples: np.ndarray) -> None:
        if len(samples):
            self.merge(RunningStats.of(samples))

    def merge(self, other: RunningStats) -> None:
        """Fold in the statistics of other samples (Chan et al. parallel update)."""
        if other.count == 0:
            return
        total = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / total)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / total)
        self.min, self.max = np.minimum(self.min, other.min), np.maximum(self.max, other.max)
        self.count = total

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / max(self.count, 1))

    def summary(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max}

    def to_json(self) -> dict:
        # mean/std/min/max are what a plain-zarr user wants; count/m2 let commits merge in O(episode).
        fields = {"mean": self.mean, "std": self.std, "min": self.min, "max": self.max, "m2": self.m2}
        return {"count": self.count, **{k: np.asarray(v).tolist() for k, v in fields.items()}}

    @classmethod
    def from_json(cls, d: dict) -> RunningStats:
        return cls(int(d["count"]), *(np.asarray(d[k], dtype=np.float64) for k in ("mean", "m2", "min", "max")))
