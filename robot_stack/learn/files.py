"""Loading the torch files runs and generators save (checkpoint.pt, weights.pt)."""

from __future__ import annotations

from pathlib import Path

import torch

from robot_stack.errors import ConfigError


def load_torch_file(path: str | Path, what: str, **options):
    """torch.load(path, **options); a file that does not load (cut short by a full disk or a
    kill, damaged, not a torch file) is one ConfigError naming it, not torch's traceback."""
    try:
        return torch.load(path, **options)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} is missing") from None
    except Exception as exc:  # torch raises many types for one cause: bytes that are not a saved object
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:160]
        raise ConfigError(f"{path}: {what} does not load; it is truncated or damaged ({detail})") from None
