"""1-D convolutional U-Net over the time axis of a trajectory window (Diffuser-style).

Input and output are (batch, horizon, channels); the network convolves over time with the
trajectory channels as feature maps, conditioned on the noise level through an embedding that
is added inside every residual block. Sized for a CPU: a few million parameters by default.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robot_stack.errors import ConfigError


@dataclass
class UNet1DConfig:
    base_channels: int = 48  # 2.5M parameters with (1, 2, 4) and 25 channels
    channel_mults: tuple[int, ...] = (1, 2, 4)
    kernel_size: int = 5
    groups: int = 8  # GroupNorm groups; must divide every level's width

    def validate(self) -> None:
        if self.base_channels <= 0 or not self.channel_mults or min(self.channel_mults) <= 0:
            raise ConfigError(f"UNet1D: base_channels and channel_mults must be positive, got {self}")
        if self.kernel_size % 2 == 0:
            raise ConfigError(f"UNet1D: kernel_size must be odd, got {self.kernel_size}")
        for mult in self.channel_mults:
            if (self.base_channels * mult) % self.groups:
                raise ConfigError(
                    f"UNet1D: groups={self.groups} must divide every level width "
                    f"(base_channels * mult = {self.base_channels * mult})"
                )

    def to_dict(self) -> dict:
        return {**asdict(self), "channel_mults": list(self.channel_mults)}

    @classmethod
    def from_dict(cls, d: dict) -> "UNet1DConfig":
        return cls(**{**d, "channel_mults": tuple(d["channel_mults"])})


def sinusoidal_embedding(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style sin/cos features of a per-sample scalar (the EDM c_noise)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=x.device, dtype=x.dtype) / half)
    angles = x[:, None] * freqs[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class ConvNormAct(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, groups: int):
        super().__init__(
            nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
            nn.GroupNorm(groups, c_out),
            nn.SiLU(),
        )


class ResidualTemporalBlock(nn.Module):
    """Two conv layers with the noise embedding added between them, plus a skip path."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, kernel_size: int, groups: int):
        super().__init__()
        self.conv1 = ConvNormAct(c_in, c_out, kernel_size, groups)
        self.conv2 = ConvNormAct(c_out, c_out, kernel_size, groups)
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, c_out))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(x) + self.emb(emb)[:, :, None]
        return self.conv2(h) + self.skip(x)


class UNet1D(nn.Module):
    def __init__(self, channels: int, cfg: UNet1DConfig | None = None):
        super().__init__()
        cfg = cfg or UNet1DConfig()
        cfg.validate()
        self.cfg = cfg
        self.channels = channels
        widths = [cfg.base_channels * m for m in cfg.channel_mults]
        emb_dim = cfg.base_channels * 4
        k, g = cfg.kernel_size, cfg.groups
        self.noise_mlp = nn.Sequential(
            nn.Linear(cfg.base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        self.down = nn.ModuleList()
        c_prev = channels
        for i, w in enumerate(widths):
            last = i == len(widths) - 1
            self.down.append(nn.ModuleList([
                ResidualTemporalBlock(c_prev, w, emb_dim, k, g),
                ResidualTemporalBlock(w, w, emb_dim, k, g),
                nn.Identity() if last else nn.Conv1d(w, w, 3, stride=2, padding=1),
            ]))
            c_prev = w
        self.mid1 = ResidualTemporalBlock(c_prev, c_prev, emb_dim, k, g)
        self.mid2 = ResidualTemporalBlock(c_prev, c_prev, emb_dim, k, g)

        self.up = nn.ModuleList()
        for i in reversed(range(len(widths) - 1)):
            w = widths[i]
            self.up.append(nn.ModuleList([
                nn.ConvTranspose1d(c_prev, c_prev, 4, stride=2, padding=1),
                ResidualTemporalBlock(c_prev + w, w, emb_dim, k, g),
                ResidualTemporalBlock(w, w, emb_dim, k, g),
            ]))
            c_prev = w
        self.final = nn.Sequential(ConvNormAct(c_prev, c_prev, k, g), nn.Conv1d(c_prev, channels, 1))

    @property
    def time_multiple(self) -> int:
        """Horizons are padded to a multiple of this (one halving per downsampling level)."""
        return 2 ** (len(self.cfg.channel_mults) - 1)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
        """x: (B, H, C) trajectory windows; c_noise: (B,) noise conditioning."""
        if x.shape[-1] != self.channels:
            raise ConfigError(f"UNet1D expects {self.channels} channels, got {x.shape[-1]}")
        horizon = x.shape[1]
        pad = -horizon % self.time_multiple
        h = x.transpose(1, 2)
        if pad:
            # Replicate the last step rather than zero-pad: keeps the boundary statistics of
            # real data, and the padded steps are cropped away below.
            h = F.pad(h, (0, pad), mode="replicate")
        emb = self.noise_mlp(sinusoidal_embedding(c_noise.reshape(-1).to(h.dtype), self.cfg.base_channels))

        skips = []
        for block1, block2, downsample in self.down:
            h = block2(block1(h, emb), emb)
            skips.append(h)
            h = downsample(h)
        h = self.mid2(self.mid1(h, emb), emb)
        skips.pop()  # the deepest level feeds the middle directly
        for upsample, block1, block2 in self.up:
            h = upsample(h)
            h = block2(block1(torch.cat([h, skips.pop()], dim=1), emb), emb)
        out = self.final(h)
        return out[:, :, :horizon].transpose(1, 2)
