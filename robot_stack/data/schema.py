"""Per-key schema of an episode store and validation of incoming rows.

Validation runs before anything is buffered or written, so bad input never reaches disk and never
touches committed episodes. Casting policy:

* float keys accept float or integer input; values are cast (float64 -> float32 loses precision,
  which is accepted) and must be finite after the cast (NaN, inf or float32 overflow is rejected);
* integer keys (images are uint8) accept integer input whose values fit the target type;
* bool keys accept bool input only (an int 0/1 is probably a mistake, e.g. a timeout flag);
* NaN/inf are rejected in every float key (action, observation, reward, timestamp, ...);
* the `timestamp` key must not go backwards within an episode (equal stamps are allowed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from robot_stack.errors import DatasetError

# Keys every dataset has, with the per-step shape and dtype kind they must have.
REQUIRED_KEYS = {"action": "f", "terminal": "b", "timestamp": "f"}
# Keys a dataset may lack, checked the same way when present. A recording of a robot without a
# reward signal has no `reward` key (rather than made-up zeros): the trainer then asks for a
# reward function.
OPTIONAL_KEYS = {"reward": "f"}
SUPPORTED_DTYPE_KINDS = "biuf"
_KEY_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]+$")

# Low-dim keys: a chunk holds this many steps (~70 KB-300 KB for typical state vectors), so a
# 1000-step episode is one or two chunk writes. Images: one frame per chunk, so one frame can be
# read without decoding its neighbours.
DEFAULT_LOWDIM_CHUNK_STEPS = 4096
DEFAULT_IMAGE_CHUNK_STEPS = 1


@dataclass(frozen=True)
class KeySpec:
    """Shape of one step (without the time axis) and dtype of a data key.

    chunk_steps: steps per zarr chunk; None picks 1 for images (uint8, 3-D) and 4096 otherwise.
    """

    shape: tuple[int, ...]
    dtype: str
    chunk_steps: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        try:
            dtype = np.dtype(self.dtype)
        except TypeError as exc:
            raise DatasetError(f"unknown dtype {self.dtype!r}: {exc}") from None
        if dtype.kind not in SUPPORTED_DTYPE_KINDS:
            raise DatasetError(f"dtype {dtype} not supported (bool, int, uint or float only)")
        object.__setattr__(self, "dtype", dtype.name)
        if any(s <= 0 for s in self.shape):
            raise DatasetError(f"shape {self.shape} must have positive sizes")
        if self.chunk_steps is not None and int(self.chunk_steps) <= 0:
            raise DatasetError(f"chunk_steps must be positive, got {self.chunk_steps}")

    @property
    def is_image(self) -> bool:
        return self.dtype == "uint8" and len(self.shape) == 3

    @property
    def chunk_len(self) -> int:
        if self.chunk_steps is not None:
            return int(self.chunk_steps)
        return DEFAULT_IMAGE_CHUNK_STEPS if self.is_image else DEFAULT_LOWDIM_CHUNK_STEPS

    def to_json(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "chunk_steps": self.chunk_len}

    @classmethod
    def from_json(cls, d: dict) -> KeySpec:
        return cls(shape=tuple(d["shape"]), dtype=d["dtype"], chunk_steps=d.get("chunk_steps"))


def standard_keys(obs_dim: int, act_dim: int, obs_dtype: str = "float32",
                  reward: bool = True) -> dict[str, KeySpec]:
    """The low-dim keys of a state-and-action dataset (add image keys to the dict as needed);
    reward=False for recordings without a reward signal."""
    keys = {
        "observation": KeySpec((obs_dim,), obs_dtype),
        "action": KeySpec((act_dim,), "float32"),
        "reward": KeySpec((), "float32"),
        "terminal": KeySpec((), "bool"),
        "timestamp": KeySpec((), "float64"),
    }
    if not reward:
        del keys["reward"]
    return keys


def validate_schema(keys: dict[str, KeySpec]) -> dict[str, KeySpec]:
    """Check key names and the required keys; returns the keys sorted by name."""
    if not isinstance(keys, dict) or not keys:
        raise DatasetError("keys must be a non-empty dict of name -> KeySpec")
    for name, spec in keys.items():
        if not isinstance(spec, KeySpec):
            raise DatasetError(f"key {name!r}: expected a KeySpec, got {type(spec).__name__}")
        segments = name.split("/") if isinstance(name, str) else [""]
        if not all(_KEY_SEGMENT.match(s) and s not in (".", "..") for s in segments):
            raise DatasetError(f"key {name!r}: use '/'-separated names of letters, digits, _ . -")
    for name in keys:
        for other in keys:
            if other.startswith(name + "/"):
                raise DatasetError(f"key {name!r} cannot be both an array and the group of {other!r}")
    for name, kind in {**REQUIRED_KEYS, **OPTIONAL_KEYS}.items():
        if name not in keys:
            if name in OPTIONAL_KEYS:
                continue
            raise DatasetError(f"required key {name!r} missing from the schema")
        if name != "action" and keys[name].shape != ():
            raise DatasetError(f"key {name!r} must be a scalar per step, got shape {keys[name].shape}")
        if kind is not None and np.dtype(keys[name].dtype).kind != kind:
            raise DatasetError(f"key {name!r} has dtype {keys[name].dtype}, expected kind {kind!r}")
    if keys["timestamp"].dtype != "float64":
        raise DatasetError("key 'timestamp' must be float64 seconds")
    if keys["action"].dtype != "float32" or len(keys["action"].shape) != 1:
        raise DatasetError(f"key 'action' must be float32 vectors, got {keys['action'].dtype} "
                           f"{keys['action'].shape}")
    observations = [k for k in keys if k == "observation" or k.startswith("observation/")]
    if not observations:
        raise DatasetError("the schema needs an 'observation' key (or keys under 'observation/')")
    for name in observations:
        if keys[name].dtype not in ("float32", "float64"):
            raise DatasetError(f"key {name!r} has dtype {keys[name].dtype}, expected float32 or float64")
    return dict(sorted(keys.items()))


def _first_bad_step(bad_rows: np.ndarray) -> int:
    return int(np.flatnonzero(bad_rows.reshape(len(bad_rows), -1).any(axis=1))[0])


def cast_rows(name: str, spec: KeySpec, value, first_step: int, single: bool) -> np.ndarray:
    """Return `value` as a (T, *spec.shape) array of spec.dtype, or raise DatasetError.

    single: value is one step (shape spec.shape) rather than a batch (T, *spec.shape).
    first_step: episode step index of the first row, for error messages.
    """
    arr = np.asarray(value)
    where = f"key {name!r} at step {first_step}"
    if single:
        if arr.shape != spec.shape:
            raise DatasetError(f"{where}: shape {arr.shape}, expected {spec.shape}")
        arr = arr[None]
    elif arr.ndim == 0 or arr.shape[1:] != spec.shape:
        raise DatasetError(f"{where}: shape {arr.shape}, expected (T,) + {spec.shape}")
    target = np.dtype(spec.dtype)
    kind = arr.dtype.kind
    if target.kind == "f":
        if kind not in "fiu":
            raise DatasetError(f"{where}: dtype {arr.dtype} cannot be stored as {target}")
        if arr.dtype != target:
            with np.errstate(over="ignore", invalid="ignore"):
                arr = arr.astype(target)
        if not np.isfinite(arr).all():
            step = first_step + _first_bad_step(~np.isfinite(arr))
            raise DatasetError(f"key {name!r} at step {step}: NaN or inf (or too large for {target})")
        return arr
    if target.kind in "iu":
        if kind not in "iu":
            raise DatasetError(f"{where}: dtype {arr.dtype} cannot be stored as {target} losslessly")
        if arr.dtype == target:
            return arr
        info = np.iinfo(target)
        bad = (arr < info.min) | (arr > info.max)
        if bad.any():
            step = first_step + _first_bad_step(bad)
            raise DatasetError(f"key {name!r} at step {step}: value out of range of {target}")
        return arr.astype(target)
    if kind != "b":
        raise DatasetError(f"{where}: dtype {arr.dtype} cannot be stored as bool (pass bools)")
    return arr


def validate_rows(keys: dict[str, KeySpec], rows: dict, first_step: int, last_timestamp: float | None,
                  single: bool) -> dict[str, np.ndarray]:
    """Validate one step or a batch of steps for every key; returns the cast (T, ...) arrays."""
    if not isinstance(rows, dict):
        raise DatasetError(f"step {first_step}: expected a dict of key -> array, got {type(rows).__name__}")
    if len(rows) != len(keys) or not all(k in rows for k in keys):
        missing, unknown = sorted(set(keys) - set(rows)), sorted(set(rows) - set(keys))
        raise DatasetError(f"step {first_step}: missing keys {missing}, unknown keys {unknown}")
    out = {name: cast_rows(name, spec, rows[name], first_step, single) for name, spec in keys.items()}
    ts = out["timestamp"]
    if not single and any(len(a) != len(ts) for a in out.values()):
        lengths = {name: len(a) for name, a in out.items()}
        raise DatasetError(f"step {first_step}: keys have different numbers of steps {lengths}")
    if len(ts) and last_timestamp is not None and ts[0] < last_timestamp:
        raise DatasetError(f"key 'timestamp' at step {first_step}: time goes backwards within the episode")
    if len(ts) > 1 and (np.diff(ts) < 0).any():
        step = first_step + 1 + int(np.flatnonzero(np.diff(ts) < 0)[0])
        raise DatasetError(f"key 'timestamp' at step {step}: time goes backwards within the episode")
    return out
