"""Crash-safe, append-only episode store: one Zarr v3 group per dataset.

Layout (diffusion_policy ReplayBuffer convention, readable with plain zarr):

    <root>/zarr.json           attributes: format, schema_version, schema, task, robot, generator, stats,
                               planned_episodes (when the writer had a target: collect, generate)
    <root>/data/<key>          (N, *shape) every episode concatenated in time; nested keys such as
                               "camera/rgb" are nested groups
    <root>/meta/episode_ends   int64 cumulative step counts; episode i = rows ends[i-1]:ends[i]
    <root>/meta/episode_start_time f64, episode_length i64, episode_success i8 (-1 unknown),
    <root>/meta/episode_source, episode_task   variable-length UTF-8 strings

Crash safety. zarr's LocalStore writes every key (chunk or zarr.json) to a temporary file and
renames it into place, so each key is either old or new after a crash; image chunks are written
with that same function by a few threads per episode (see IMAGE_WRITE_THREADS), and flush and
commit wait for them. A commit writes, in order:
data chunks -> data shapes -> per-episode meta -> episode_ends (shape, then chunk) -> stats.
The episode becomes visible with the episode_ends chunk write. episode_ends has fill value -1, so a
crash between growing its shape and writing its chunk leaves a trailing -1 that readers ignore
(they take the valid prefix). Committed rows are never changed: the writer re-writes the chunk that
holds the last committed rows with those rows copied verbatim from disk, so both versions of that
chunk hold the same committed bytes. Rows or meta entries beyond the committed episodes are the
uncommitted tail: reported by `uncommitted_steps`, removed by `trim_uncommitted()`, overwritten by
the next episode. Stats are written after episode_ends and carry the step count they cover; a
stale count is caught up from the data on open. Durability against power loss (fsync) is not
provided: zarr does not fsync, so this protects against process crashes and kills. An OSError
while writing (disk full, read-only file system) is a one-line DatasetError; it leaves at most an
uncommitted tail. One in the stats write after the commit point is not an error: the episode is
committed (and reported so), its stats stale until caught up. (LocalStore writes atomically since zarr 3.1.3; see robot_stack/compat.py.)

Damage. Every chunk ends with its crc32c (zarr's crc32c codec; datasets written before it
have none and still read), and a chunk that does not decode is a DatasetError naming it. Opening
checks, from metadata and the chunk listing only, the invariants every reader relies on:
episode_ends a strictly increasing prefix followed by at most one unwritten -1, every data array
as long as the committed steps with the schema's shape and dtype, every chunk of committed rows
present and non-empty, the groups' own zarr.json present, the attributes (and the robot
description's fields readers use) of their types, the stats attribute well-formed and not ahead
of episode_ends; opening to append also decodes the chunk holding each array's last committed
rows, which the next commit rewrites. A broken one is refused in one line (`problems` lists them; `data check` reports them all). Only crash
leftovers and the stats are repairable; anything else is reported and never "repaired".

One writer at a time: mode "a" and create take an exclusive flock on the dataset directory (no
lock file, so the hierarchy stays pure zarr). Readers take no lock and see committed episodes only:
they read episode_ends first, then data.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import math
import os
import re
import shutil
import struct
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ZstdCodec

from robot_stack import compat
from robot_stack.data.schema import KeySpec, validate_rows, validate_schema
from robot_stack.data.stats import RunningStats, rows_stats
from robot_stack.errors import DatasetError

FORMAT = "robot_stack.episodes"
SCHEMA_VERSION = 1
SOURCES = ("teleop", "scripted", "sim", "synthetic")
META_CHUNK = 4096
# The streaming writer writes each chunk as soon as it is full, except that image frames go in
# groups of this many chunks, so the array's shape (its zarr.json) is rewritten once per group.
IMAGE_WRITE_CHUNKS = 8
# Image chunks bypass zarr's per-call write pipeline (~3 ms per 640x480 frame on top of the
# compression itself): the writer encodes each chunk with the array's own Blosc settings and writes
# it under the array's chunk key with LocalStore's own atomic write (temporary file + rename), on
# this many threads per open episode. Blosc releases the GIL, so compressing frame k overlaps the
# caller producing frame k+1 and the next frames; at most IMAGE_CHUNKS_IN_FLIGHT chunks are queued
# (bounded memory). The write calls zarr's module-level `_put` directly: LocalStore.set runs that
# same function but hops through zarr's event loop and a second thread (+0.6 ms CPU per frame).
IMAGE_WRITE_THREADS = 2
IMAGE_CHUNKS_IN_FLIGHT = 2 * IMAGE_WRITE_CHUNKS
# Blosc lz4 without shuffle (frames are interleaved uint8, so byte shuffle is a no-op): on the
# benchmark's rendered-like frames 1.2 ms/frame and 5x smaller; bitshuffle was slower and larger
# (1.8 ms, 3x), zstd smaller (10x) but 2x slower (see benchmarks/store_write.py).
IMAGE_COMPRESSOR = BloscCodec(cname="lz4", clevel=5, shuffle="noshuffle")
# Every chunk ends with the crc32c of its compressed bytes (zarr's crc32c codec, so plain zarr
# verifies it on every read): a damaged chunk fails to decode, naming itself, instead of reading
# as other values. zstd level 0 is zarr's default compressor for the other arrays.
IMAGE_COMPRESSORS = [IMAGE_COMPRESSOR, Crc32cCodec()]
COMPRESSORS = [ZstdCodec(level=0, checksum=False), Crc32cCodec()]
# Image chunk files side by side (data/camera/rgb/c.<frame>.0.0.0) instead of zarr's default
# c/<frame>/0/0/0, which makes three directories per frame: 0.5 ms of a 1 ms chunk write.
IMAGE_CHUNK_KEYS = {"name": "default", "separator": "."}
# zarr's default scans each chunk to skip all-fill chunks: 3 ms per 640x480 frame for nothing.
ARRAY_CONFIG = {"write_empty_chunks": True}
# Temporary files zarr's LocalStore leaves behind when killed between write and rename.
PARTIAL_FILE = re.compile(r"\.[0-9a-f]{32}\.partial$")
META_DTYPES = {"start_time": "float64", "length": "int64", "success": "int8", "source": str, "task": str}
META_FILL = {"start_time": 0.0, "length": 0, "success": -1, "source": "", "task": ""}


def _is_url(path) -> bool:
    return isinstance(path, str) and "://" in path


def _jsonable(value, what: str):
    """Numpy arrays/scalars -> lists/numbers; anything else that JSON cannot hold -> DatasetError."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, what) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v, what) for v in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return value.tolist()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise DatasetError(f"{what}: {type(value).__name__} cannot be stored as a JSON attribute")


def committed_prefix(ends: np.ndarray) -> np.ndarray:
    """The committed episode_ends: entries before the first unwritten (-1) one."""
    unwritten = np.flatnonzero(ends < 0)
    return ends[: unwritten[0]] if len(unwritten) else ends


@dataclass(frozen=True)
class Problem:
    """A broken invariant found when a dataset is opened.

    repairable: `trim_uncommitted` (crash leftovers) or `recompute_stats` fixes it.
    blocks_reading: readers and writers refuse the dataset while it is there; the others are
    leftovers of a crashed write that readers never look at.
    """

    text: str
    repairable: bool = False
    blocks_reading: bool = True


@contextlib.contextmanager
def _writing(path):
    """An OSError while writing (read-only file system, disk full, ...) as one DatasetError line.

    Every key is written atomically and an episode is published last, so what was committed
    before the error is unchanged; an interrupted episode is an uncommitted tail."""
    try:
        yield
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise DatasetError(f"cannot write to {path}: {reason}; committed episodes are unchanged") from None


def _chunk_name(arr, coords) -> str:
    return f"{arr.path}/{arr.metadata.encode_chunk_key(tuple(coords))}"


def _chunk_grid(arr, rows: int):
    """Chunk coordinates that hold rows 0:rows of an array (every chunk of the other axes)."""
    axes = [range(math.ceil(rows / arr.chunks[0]))]
    axes += [range(math.ceil(size / chunk)) for size, chunk in zip(arr.shape[1:], arr.chunks[1:])]
    return itertools.product(*axes)


def read_rows(arr, start: int, stop: int, dataset) -> np.ndarray:
    """arr[start:stop]; a chunk that cannot be read or decoded is a DatasetError naming it."""
    try:
        return arr[start:stop]
    except DatasetError:
        raise
    except Exception as exc:  # zarr and its codecs raise many types for one cause: bad bytes
        chunk_len = arr.chunks[0]
        where, cause = f"rows {start}:{stop} of {arr.path}", exc
        for lo in range(start - start % chunk_len, stop, chunk_len):
            try:
                arr[lo:min(lo + chunk_len, arr.shape[0])]
            except Exception as chunk_exc:
                coords = (lo // chunk_len, *([0] * (arr.ndim - 1)))
                where, cause = f"chunk {_chunk_name(arr, coords)}", chunk_exc
                break
        detail = " ".join(f"{type(cause).__name__}: {cause}".split())[:200]
        raise DatasetError(f"{dataset}: {where} is damaged and cannot be decoded ({detail})") from None


class EpisodeStore:
    """A dataset of episodes. Use `create` or `open`, not the constructor."""

    def __init__(self, path, mode: str, lock_fd: int | None, raise_problems: bool = True):
        self.path = path
        self.mode = mode
        self._lock_fd = lock_fd
        self._raise_problems = raise_problems
        self._writer: EpisodeWriter | None = None
        self.refresh()

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path, keys: dict[str, KeySpec], *, task: str, robot: dict,
               generator: dict | None = None, planned_episodes: int | None = None) -> EpisodeStore:
        """Create an empty dataset at a local directory that does not exist or is empty.

        planned_episodes: how many episodes the writer means to write (a collection or
        generation run), so that a run that stopped early shows as incomplete; None for open-ended
        writers such as the recorder.
        """
        keys = validate_schema(keys)
        if not isinstance(robot, dict) or (generator is not None and not isinstance(generator, dict)):
            raise DatasetError("robot must be a dict and generator a dict or None")
        attrs = {
            "format": FORMAT,
            "schema_version": SCHEMA_VERSION,
            "schema": {k: s.to_json() for k, s in keys.items()},
            "task": str(task),
            "robot": _jsonable(robot, "robot"),
            "generator": _jsonable(generator, "generator"),
            "stats": {"steps": 0, "keys": {}},
        }
        if planned_episodes is not None:
            attrs["planned_episodes"] = _planned_count(planned_episodes)
        if _is_url(path):
            raise DatasetError(f"{path}: datasets are created on a local path only")
        path = Path(path)
        if path.exists():
            if (path / "zarr.json").exists():
                raise DatasetError(f"{path} already holds a dataset; open it with mode='a' to append")
            if not path.is_dir() or any(path.iterdir()):
                raise DatasetError(f"{path} exists and is not an empty directory; refusing to write there")
        # Build the dataset beside its destination and rename it into place, so a crash during
        # create leaves either no dataset or a complete empty one (never a half-made group).
        staging = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
        with _writing(path):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                _build_empty(staging, keys, attrs)
                os.rename(staging, path)  # replaces an empty directory, fails on a non-empty one
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        lock_fd = _lock(path)
        return cls(path, "a", lock_fd)

    @classmethod
    def open(cls, path, mode: str = "r", raise_problems: bool = True) -> EpisodeStore:
        """Open a dataset: mode "r" (local path or fsspec URL) or "a" (local path, to append).

        Opening checks the dataset's invariants (see `problems`) and raises a DatasetError naming
        the first one that makes it unsafe to read; `data check` passes raise_problems=False to
        list them all instead.
        """
        if mode not in ("r", "a"):
            raise DatasetError(f"mode must be 'r' or 'a', got {mode!r}")
        if _is_url(path):
            if mode == "a":
                raise DatasetError(f"{path}: appending needs a local path (atomic renames, flock)")
            return cls(path, mode, None, raise_problems)
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise DatasetError(f"{path} is not a dataset (no zarr.json)")
        lock_fd = _lock(path) if mode == "a" else None
        try:
            return cls(path, mode, lock_fd, raise_problems)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def refresh(self) -> None:
        """Re-read the dataset: episode_ends first, then the data arrays (see module docstring).

        Checks the invariants every reader relies on, from metadata and the chunk listing only
        (no data is read): `problems` lists what is broken, and a problem that blocks reading
        raises a DatasetError naming it (unless opened with raise_problems=False).
        """
        if self._writer is not None:
            raise DatasetError("cannot refresh while an episode is being written")
        zarr_mode = "r" if self.mode == "r" else "r+"
        try:
            root = zarr.open_group(self.path if _is_url(self.path) else str(self.path), mode=zarr_mode,
                                   use_consolidated=False)
            attrs = root.attrs.asdict()
        except (KeyError, ValueError, TypeError, OSError) as exc:  # TypeError: JSON of the wrong shape
            raise DatasetError(f"{self.path} is not a readable dataset: {exc!r}") from None
        if attrs.get("format") != FORMAT:
            raise DatasetError(f"{self.path} is a zarr group but not a robot_stack dataset")
        if attrs.get("schema_version") != SCHEMA_VERSION:
            raise DatasetError(f"{self.path}: schema version {attrs.get('schema_version')} not supported")
        self.keys: dict[str, KeySpec] = _stored_schema(self.path, attrs.get("schema"))
        names = ["meta/episode_ends", *(f"meta/episode_{m}" for m in META_DTYPES),
                 *(f"data/{k}" for k in self.keys)]
        # zarr opens an array below a group whose zarr.json is gone, but cannot list that group:
        # the hierarchy is no longer one plain zarr can read, so it is damage like a lost array.
        groups = sorted({name.rsplit("/", depth)[0] for name in names for depth in range(1, name.count("/") + 1)})
        for group in groups:
            try:
                node = root[group]
            except (KeyError, ValueError, TypeError, OSError):
                raise DatasetError(f"{self.path}: group {group} is missing or unreadable (its zarr.json)") from None
            if not isinstance(node, zarr.Group):
                raise DatasetError(f"{self.path}: {group} is an array, expected a group")
        arrays = {}
        for name in names:
            try:
                arrays[name] = root[name]
            except (KeyError, ValueError, TypeError, OSError) as exc:
                raise DatasetError(f"{self.path}: array {name} is missing or unreadable ({exc!r})") from None
            if not isinstance(arrays[name], zarr.Array):
                raise DatasetError(f"{self.path}: {name} is a group, expected an array")
        self._root, self._attrs = root, attrs
        self._ends_array = arrays["meta/episode_ends"]
        self._meta = {name: arrays[f"meta/episode_{name}"].with_config(ARRAY_CONFIG) for name in META_DTYPES}
        self._data = {k: arrays[f"data/{k}"].with_config(ARRAY_CONFIG) for k in self.keys}
        self._raw_ends = (read_rows(self._ends_array, 0, self._ends_array.shape[0], self.path)
                          if self._ends_array.ndim == 1 else np.zeros(0, np.int64))
        self.episode_ends = committed_prefix(self._raw_ends).astype(np.int64)
        self.problems: list[Problem] = _structure_problems(self)
        blocking = [p.text for p in self.problems if p.blocks_reading]
        if blocking and self._raise_problems:
            more = f" (and {len(blocking) - 1} more problems)" if len(blocking) > 1 else ""
            raise DatasetError(f"{self.path}: {blocking[0]}{more}; `robot-stack data check` lists them")
        # Loaded now unless `data check` opened it (it reads the data only once the chunks and
        # their checksums are known to be good, and loads the stats then, through stats()).
        self._stats: dict[str, RunningStats] | None = None
        if self._raise_problems:
            if self.mode == "a":
                self._decode_last_chunks()
            self._stats = self._load_stats()
            if self.mode == "a" and self._stats_steps != self.n_steps:
                with _writing(self.path):
                    self._write_stats()

    def _decode_last_chunks(self) -> None:
        """Decode the chunk holding the last committed rows of every data and meta array: the
        next commit rewrites it with those rows, so a damaged one must stop an append before
        anything (stats, planned episodes, new rows) is written."""
        arrays = [(arr, self.n_steps) for arr in self._data.values()]
        arrays += [(arr, self.n_episodes) for arr in self._meta.values()]
        for arr, rows in arrays:
            if rows:
                read_rows(arr, (rows - 1) - (rows - 1) % arr.chunks[0], rows, self.path)

    def close(self) -> None:
        """Release the writer lock. An open streaming episode stays uncommitted."""
        if self._writer is not None:
            self._writer._end()  # no chunk write may land after the lock is gone
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- reading -------------------------------------------------------------------------
    @property
    def n_episodes(self) -> int:
        return len(self.episode_ends)

    @property
    def n_steps(self) -> int:
        return int(self.episode_ends[-1]) if len(self.episode_ends) else 0

    @property
    def task(self) -> str:
        return self._attrs["task"]

    @property
    def robot(self) -> dict:
        return self._attrs["robot"]

    @property
    def generator(self) -> dict | None:
        return self._attrs.get("generator")

    @property
    def planned_episodes(self) -> int | None:
        """Episodes the dataset's writer meant to write (None: open-ended, e.g. a recording)."""
        return self._attrs.get("planned_episodes")

    @property
    def incomplete(self) -> bool:
        """Whether fewer episodes are committed than the writer planned (it stopped early)."""
        planned = self.planned_episodes  # a malformed one is a problem of its own (see problems)
        return _integer(planned) and self.n_episodes < planned

    def plan_episodes(self, more: int) -> None:
        """Record that the writer means to add `more` episodes to the committed ones."""
        self._require_writable()
        with _writing(self.path):
            self._root.attrs.update({"planned_episodes": self.n_episodes + _planned_count(more)})
        self._attrs = self._root.attrs.asdict()

    @property
    def uncommitted_steps(self) -> int:
        """Rows on disk beyond the last committed episode (in any key): a crashed or open episode."""
        return max(0, max(a.shape[0] for a in self._data.values()) - self.n_steps)

    @property
    def uncommitted_episodes_meta(self) -> int:
        """Per-episode meta entries (or a -1 episode_ends entry) beyond the committed episodes."""
        lengths = [len(self._raw_ends)] + [a.shape[0] for a in self._meta.values()]
        return max(0, max(lengths) - self.n_episodes)

    @property
    def episode_meta(self) -> dict[str, np.ndarray]:
        n = self.n_episodes
        meta = {name: read_rows(arr, 0, n, self.path) for name, arr in self._meta.items()}
        for name in ("source", "task"):
            meta[name] = np.array(meta[name].tolist(), dtype=str)
        return meta

    def _check_key(self, key: str) -> None:
        if key not in self.keys:
            raise DatasetError(f"unknown key {key!r}; dataset keys: {sorted(self.keys)}")

    def read(self, key: str, start: int | None = None, stop: int | None = None) -> np.ndarray:
        """Committed rows start:stop (python slice semantics over the committed steps)."""
        self._check_key(key)
        start, stop, _ = slice(start, stop).indices(self.n_steps)
        return read_rows(self._data[key], start, max(start, stop), self.path)

    def episode(self, i: int) -> dict[str, np.ndarray]:
        if not -self.n_episodes <= i < self.n_episodes:
            raise DatasetError(f"episode {i} out of range: dataset has {self.n_episodes} episodes")
        i %= self.n_episodes
        start = int(self.episode_ends[i - 1]) if i else 0
        return {k: read_rows(self._data[k], start, int(self.episode_ends[i]), self.path) for k in self.keys}

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """mean/std/min/max (float64) per key over every committed step; see stats.py for images.

        Empty while the dataset has no steps.
        """
        if self._stats is None:
            blocking = [p.text for p in self.problems if p.blocks_reading]
            if blocking:
                raise DatasetError(f"{self.path}: statistics unavailable: {blocking[0]}")
            self._stats = self._load_stats()
        return {k: s.summary() for k, s in self._stats.items() if s.count}

    # ---- statistics ----------------------------------------------------------------------
    def _load_stats(self) -> dict[str, RunningStats]:
        """Stored stats (checked by _structure_problems), caught up from the data when they cover
        fewer steps than are committed."""
        if self._stored_stats:
            return self.compute_stats(self._stats_steps, self._stored_stats)
        return self.compute_stats()

    def compute_stats(self, start: int = 0, stats: dict[str, RunningStats] | None = None
                      ) -> dict[str, RunningStats]:
        """Statistics of committed rows start: read from disk, folded into `stats` if given."""
        stats = stats if stats is not None else {k: RunningStats.empty(s) for k, s in self.keys.items()}
        for key, spec in self.keys.items():
            for rows in self.iter_blocks(key, start):
                stats[key].merge(rows_stats(spec, rows))
        return stats

    def recompute_stats(self) -> None:
        """Replace the stored stats by ones computed from all committed data (repair)."""
        self._require_writable()
        self._stats = self.compute_stats()
        with _writing(self.path):
            self._write_stats()

    def iter_blocks(self, key: str, start: int = 0):
        """Committed rows start: of a key in blocks of bounded memory (whole chunks)."""
        block = _block_rows(self.keys[key])
        for lo in range(start, self.n_steps, block):
            yield read_rows(self._data[key], lo, min(lo + block, self.n_steps), self.path)

    def stats_fresh(self) -> bool:
        """Whether the stored stats cover exactly the committed steps."""
        return self._stats_steps == self.n_steps

    def _write_stats(self) -> None:
        keys = {k: s.to_json() for k, s in self._stats.items()} if self.n_steps else {}
        self._root.attrs.update({"stats": {"steps": self.n_steps, "keys": keys}})
        self._attrs = self._root.attrs.asdict()
        self._stats_steps = self.n_steps

    # ---- writing -------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if self.mode != "a" or self._lock_fd is None:
            raise DatasetError(f"{self.path} is open read-only (or closed); open it with mode='a'")
        if self._writer is not None:
            raise DatasetError("an episode is being written; commit or discard it first")

    def begin_episode(self, source: str, start_time: float | None = None, task: str | None = None
                      ) -> EpisodeWriter:
        """Start streaming an episode after the committed ones (overwriting any uncommitted tail).

        start_time: wall-clock start (epoch s), default now. task: defaults to the dataset task.
        """
        self._require_writable()
        if source not in SOURCES:
            raise DatasetError(f"source {source!r} not one of {SOURCES}")
        start_time = time.time() if start_time is None else float(start_time)
        if not np.isfinite(start_time):
            raise DatasetError(f"start_time must be finite, got {start_time}")
        self._writer = EpisodeWriter(self, source, start_time, self.task if task is None else str(task))
        return self._writer

    def append_episode(self, data: dict[str, np.ndarray], *, source: str, success: bool | int | None = None,
                       start_time: float | None = None, task: str | None = None) -> int:
        """Validate and commit a whole episode; returns its index."""
        _success_code(success)  # fail before writing anything
        writer = self.begin_episode(source, start_time, task)
        try:
            writer.add_steps(data)
            return writer.commit(success)
        finally:
            if self._writer is writer:
                writer.discard()

    def trim_uncommitted(self) -> None:
        """Drop rows and meta entries beyond the committed episodes, and stale temporary files."""
        self._require_writable()
        unrepairable = [p.text for p in self.problems if not p.repairable]
        if unrepairable:
            raise DatasetError(f"{self.path}: not trimming: {unrepairable[0]}")
        with _writing(self.path):
            for arr in self._data.values():
                if arr.shape[0] != self.n_steps:
                    arr.resize((self.n_steps, *arr.shape[1:]))
            for arr in [*self._meta.values(), self._ends_array]:
                if arr.shape[0] != self.n_episodes:
                    arr.resize((self.n_episodes,))
            for directory, _, files in os.walk(self.path):
                for name in files:
                    if PARTIAL_FILE.search(name):
                        os.unlink(os.path.join(directory, name))
        self.refresh()

    def _commit(self, writer: EpisodeWriter, success: int) -> int:
        """Second half of EpisodeWriter.commit: data are on disk, publish the episode."""
        with _writing(self.path):
            index = self._publish(writer, success)
        try:
            self._write_stats()
        except OSError:
            # The episode is committed (its episode_ends entry is on disk), so the commit must not
            # be reported as failed. The stats are derived: they stay stale on disk, are caught
            # up from the data on the next open, and written in full by the next commit.
            pass
        return index

    def _publish(self, writer: EpisodeWriter, success: int) -> int:
        index, new_steps = self.n_episodes, self.n_steps + writer.n_steps
        for arr in self._data.values():
            if arr.shape[0] != new_steps:
                arr.resize((new_steps, *arr.shape[1:]))
        meta = {"start_time": writer.start_time, "length": writer.n_steps, "success": success,
                "source": writer.source, "task": writer.task}
        for name, value in meta.items():
            _set_entry(self._meta[name], index, value)
        _set_entry(self._ends_array, index, new_steps)  # the commit point
        self._raw_ends = self._ends_array[:]
        self.episode_ends = np.append(self.episode_ends, np.int64(new_steps))
        for key, episode_stats in writer.stats.items():
            self._stats[key].merge(episode_stats)
        return index


def _planned_count(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise DatasetError(f"planned episodes must be a non-negative integer, got {n!r}")
    return int(n)


def _success_code(success) -> int:
    """meta/episode_success value: -1 unknown (None), 0 failure, 1 success."""
    if success is None:
        return -1
    if isinstance(success, (bool, np.bool_, int, np.integer)) and int(success) in (-1, 0, 1):
        return int(success)
    raise DatasetError(f"success must be None, a bool, or -1/0/1; got {success!r}")


def _set_entry(arr, index: int, value) -> None:
    """Make a 1-D array exactly index+1 long and write its last entry: shape first, then chunk."""
    if arr.shape[0] != index + 1:
        arr.resize((index + 1,))
    arr[index] = value


def _block_rows(spec: KeySpec) -> int:
    """Rows per streaming write (and per read when scanning a key): whole chunks."""
    return spec.chunk_len * (IMAGE_WRITE_CHUNKS if spec.is_image else 1)


class _ImageChunkEncoder:
    """Encodes a uint8 chunk into exactly the bytes the array's codecs (bytes -> blosc, then
    crc32c in datasets written since checksums were added) produce."""

    def __init__(self, blosc: Blosc, checksum: bool):
        self.blosc, self.checksum = blosc, checksum

    @classmethod
    def of(cls, arr) -> _ImageChunkEncoder | None:
        """The encoder of an array's chunks, or None when it has other codecs (its chunks then
        go through zarr)."""
        codecs = arr.metadata.codecs
        if arr.dtype != np.uint8 or len(codecs) not in (2, 3) or not isinstance(codecs[0], BytesCodec) \
                or not isinstance(codecs[1], BloscCodec) \
                or (len(codecs) == 3 and not isinstance(codecs[2], Crc32cCodec)):
            return None
        blosc = codecs[1]
        shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
        return cls(Blosc(cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle[blosc.shuffle.value],
                         blocksize=blosc.blocksize, typesize=blosc.typesize), checksum=len(codecs) == 3)

    def encode(self, chunk: np.ndarray) -> bytes:
        compressed = self.blosc.encode(chunk)
        if not self.checksum:
            return compressed
        return compressed + struct.pack("<I", google_crc32c.value(compressed))  # zarr's crc32c layout


def _store_chunk(store, key: str, encoder: _ImageChunkEncoder, chunk: np.ndarray) -> None:
    """Runs on the image write pool: compress one chunk and write it atomically."""
    compat.put_local(store, key, encoder.encode(chunk))


def _build_empty(path: Path, keys: dict[str, KeySpec], attrs: dict) -> None:
    """An empty dataset's group and arrays at path (which must not exist)."""
    root = zarr.open_group(path, mode="w-", attributes=attrs)
    for name, spec in keys.items():
        root.create_array(
            f"data/{name}", shape=(0, *spec.shape), chunks=(spec.chunk_len, *spec.shape),
            dtype=spec.dtype, fill_value=0, compressors=IMAGE_COMPRESSORS if spec.is_image else COMPRESSORS,
            chunk_key_encoding=IMAGE_CHUNK_KEYS if spec.is_image else None)
    root.create_array("meta/episode_ends", shape=(0,), chunks=(META_CHUNK,), dtype="int64", fill_value=-1,
                      compressors=COMPRESSORS)
    for name, dtype in META_DTYPES.items():
        root.create_array(f"meta/episode_{name}", shape=(0,), chunks=(META_CHUNK,), dtype=dtype,
                          fill_value=META_FILL[name], compressors=COMPRESSORS)


def _stored_schema(path, schema) -> dict[str, KeySpec]:
    """The `schema` attribute as KeySpecs, checked like a new dataset's schema."""
    if not isinstance(schema, dict):
        raise DatasetError(f"{path}: the schema attribute is a {type(schema).__name__}, expected a dict")
    try:
        keys = {k: KeySpec.from_json(v) for k, v in schema.items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DatasetError(f"{path}: the schema attribute is malformed ({exc!r})") from None
    except DatasetError as exc:
        raise DatasetError(f"{path}: the schema attribute is invalid: {exc}") from None
    try:
        return validate_schema(keys)
    except DatasetError as exc:
        raise DatasetError(f"{path}: the stored schema is invalid: {exc}") from None


def _integer(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _numbers(value) -> bool:
    return isinstance(value, list) and all(_number(v) for v in value)


# Dataset attributes readers use beside the schema and stats: name -> (valid, what it must be).
ATTRIBUTE_TYPES = {
    "task": (lambda v: isinstance(v, str), "a string"),
    "robot": (lambda v: isinstance(v, dict), "a dict"),
    "generator": (lambda v: v is None or isinstance(v, dict), "a dict or null"),
    "planned_episodes": (lambda v: v is None or (_integer(v) and v >= 0), "a non-negative integer or absent"),
}
# Fields of the robot description that export, deploy and generate read (each where present:
# a recording's description holds only what its spec says).
ROBOT_FIELD_TYPES = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "control_rate_hz": (lambda v: _number(v) and v > 0, "a positive number"),
    "action_low": (_numbers, "a list of numbers"),
    "action_high": (_numbers, "a list of numbers"),
    "joint_names": (lambda v: isinstance(v, list) and all(isinstance(j, str) for j in v), "a list of strings"),
    "command_interface": (lambda v: v is None or isinstance(v, str), "a string or null"),
    "observation_layout": (lambda v: isinstance(v, list) and all(
        isinstance(part, dict) and isinstance(part.get("name"), str) and _integer(part.get("size"))
        and part["size"] > 0 for part in v), "a list of {name, size > 0}"),
}


def _structure_problems(store: EpisodeStore) -> list[Problem]:
    """The invariants readers rely on, from metadata and the chunk listing (no data read).

    Also sets store._stats_steps and store._stored_stats from the stats attribute."""
    problems: list[Problem] = []
    raw, n_eps, n_steps = store._raw_ends, store.n_episodes, store.n_steps
    attrs = store._attrs
    for name, (valid, expected) in ATTRIBUTE_TYPES.items():
        if not valid(attrs.get(name)):
            problems.append(Problem(f"the {name} attribute is {attrs.get(name)!r:.40}, expected {expected}"))
    robot = attrs.get("robot") if isinstance(attrs.get("robot"), dict) else {}
    for name, (valid, expected) in ROBOT_FIELD_TYPES.items():
        if name in robot and not valid(robot[name]):
            problems.append(Problem(f"the robot attribute's {name} is {robot[name]!r:.40}, expected {expected}"))

    ends_array = store._ends_array
    if ends_array.ndim != 1 or ends_array.dtype != np.int64:
        problems.append(Problem(f"meta/episode_ends is {ends_array.dtype} of {ends_array.ndim} dimensions, "
                                "expected 1-D int64"))
    committed = raw[:n_eps]
    steps = np.diff(np.concatenate([[0], committed]))
    if (steps <= 0).any():
        i = int(np.flatnonzero(steps <= 0)[0])
        problems.append(Problem(f"meta/episode_ends is not strictly increasing from a positive first entry "
                                f"(entry {i} is {int(committed[i])})"))
    tail = raw[n_eps:]
    if (tail >= 0).any():
        problems.append(Problem("meta/episode_ends has committed-looking entries after an unwritten (-1) one "
                                f"({tail.tolist()[:5]} after entry {n_eps - 1})"))
    elif (tail < -1).any():
        problems.append(Problem(f"meta/episode_ends holds {int(tail[tail < -1][0])}, neither an episode end "
                                "nor unwritten (-1)"))
    elif len(tail) > 1:
        problems.append(Problem(f"meta/episode_ends has {len(tail)} unwritten (-1) entries; a crashed commit "
                                "leaves at most one"))
    elif len(tail):
        problems.append(Problem(f"meta/episode_ends has {len(tail)} unwritten (-1) entries (crash in a commit)",
                                repairable=True, blocks_reading=False))

    for key, spec in store.keys.items():
        arr = store._data[key]
        if arr.shape[1:] != spec.shape or arr.dtype != np.dtype(spec.dtype):
            problems.append(Problem(f"data/{key}: {arr.shape[1:]} {arr.dtype} does not match the schema "
                                    f"{spec.shape} {spec.dtype}"))
        if arr.shape[0] < n_steps:
            problems.append(Problem(f"data/{key}: {arr.shape[0]} rows, but episode_ends covers {n_steps}"))
        elif arr.shape[0] > n_steps:
            problems.append(Problem(f"data/{key}: {arr.shape[0] - n_steps} uncommitted rows after the last "
                                    "episode", repairable=True, blocks_reading=False))
    for name, arr in store._meta.items():
        expected = META_DTYPES[name]
        if arr.ndim != 1 or (np.dtype(arr.dtype).kind not in "OTU" if expected is str
                             else arr.dtype != np.dtype(expected)):
            problems.append(Problem(f"meta/episode_{name} is {arr.dtype} of {arr.ndim} dimensions, expected "
                                    f"1-D {'strings' if expected is str else expected}"))
        if arr.shape[0] < n_eps:
            problems.append(Problem(f"meta/episode_{name}: {arr.shape[0]} entries for {n_eps} episodes"))
        elif arr.shape[0] > n_eps:
            problems.append(Problem(f"meta/episode_{name}: {arr.shape[0] - n_eps} uncommitted entries",
                                    repairable=True, blocks_reading=False))
    if not any(p.blocks_reading for p in problems):
        # The rows every committed episode needs; episode_ends also its unwritten entries but the
        # last one (a crashed commit may not have written it). The other meta arrays only where
        # they carry checksums: before that (and ARRAY_CONFIG on them), zarr skipped writing their
        # chunks that held only fill values (e.g. success all unknown); check compares values.
        needed = [(arr, n_steps) for arr in store._data.values()]
        needed += [(arr, n_eps) for arr in store._meta.values()
                   if any(isinstance(codec, Crc32cCodec) for codec in arr.metadata.codecs)]
        needed.append((ends_array, max(n_eps, len(raw) - 1)))
        problems += _chunk_problems(store, needed)
    problems += _stats_problems(store)
    return problems


def _chunk_problems(store: EpisodeStore, needed) -> list[Problem]:
    """Chunks of committed rows that are missing (zarr would read them as fill values) or empty."""
    problems = []
    for arr, rows in needed:
        present = _chunk_files(store, arr)
        missing, empty = [], []
        for coords in _chunk_grid(arr, rows):
            key = arr.metadata.encode_chunk_key(coords)
            if key not in present:
                missing.append(f"{arr.path}/{key}")
            elif present[key] == 0:
                empty.append(f"{arr.path}/{key}")
        for names, what in ((missing, "missing"), (empty, "empty (0 bytes)")):
            if names:
                more = f" and {len(names) - 3} more" if len(names) > 3 else ""
                problems.append(Problem(f"chunk{'s' if len(names) > 1 else ''} {', '.join(names[:3])}{more} "
                                        f"of committed rows {'are' if len(names) > 1 else 'is'} {what}"))
    return problems


def _chunk_files(store: EpisodeStore, arr) -> dict[str, int | None]:
    """Keys of the files under an array's directory (relative to it) -> size (None: unknown)."""
    if _is_url(store.path):
        return {key: None for key in compat.list_prefix(arr.store_path.store, arr.store_path.path + "/")}
    files, stack = {}, [(Path(store.path) / arr.path, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                stack.append((entry.path, prefix + entry.name + "/"))
            else:
                files[prefix + entry.name] = entry.stat().st_size
    return files


def _stats_problems(store: EpisodeStore) -> list[Problem]:
    """Check the stats attribute; sets store._stats_steps and store._stored_stats."""
    store._stats_steps, store._stored_stats = -1, None
    stored = store._attrs.get("stats")
    try:
        if not isinstance(stored, dict) or not isinstance(stored.get("keys"), dict):
            raise ValueError(f"a {type(stored).__name__}, expected {{steps, keys}}")
        steps = stored.get("steps")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise ValueError(f"steps is {steps!r}")
        stats = {}
        if steps:
            if set(stored["keys"]) != set(store.keys):
                raise ValueError("its keys differ from the schema's")
            for key, spec in store.keys.items():
                stats[key] = RunningStats.from_json(stored["keys"][key])
                expected = RunningStats.empty(spec).mean.shape
                if any(np.shape(v) != expected for v in (stats[key].mean, stats[key].m2, stats[key].min,
                                                         stats[key].max)):
                    raise ValueError(f"the statistics of {key!r} have the wrong shape")
    except (ValueError, TypeError, KeyError) as exc:
        reason = exc.args[0] if isinstance(exc, ValueError) and exc.args else repr(exc)
        return [Problem(f"the stats attribute is malformed ({reason})", repairable=True)]
    if steps > store.n_steps:
        return [Problem(f"stats cover {steps} steps but episode_ends commits only {store.n_steps}: "
                        "committed episodes are missing from meta/episode_ends")]
    store._stats_steps, store._stored_stats = steps, stats
    return []


def _lock(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatasetError(f"{path} is open for writing by another process") from None
    return fd


class _KeyBuffer:
    """In-memory rows of one key, aligned to its chunk grid, so every write covers whole chunks.

    It starts at the chunk holding the first new row, pre-filled with the committed rows of that
    chunk read back from disk, and is written when full (or by flush/commit, partially).
    """

    def __init__(self, spec: KeySpec, arr, first_row: int, pool: ThreadPoolExecutor | None):
        self.spec, self.arr, self.pool = spec, arr, pool
        self.rows = np.empty((_block_rows(spec), *spec.shape), dtype=spec.dtype)
        self.start = first_row - first_row % spec.chunk_len   # dataset row of rows[0]
        self.filled = first_row - self.start
        if self.filled:
            self.rows[: self.filled] = read_rows(arr, self.start, first_row, arr.store_path.store.root)
        self.new_from = self.filled   # rows before this are committed or already in the stats
        self.written = self.filled    # rows before this are on disk
        self.stats = RunningStats.empty(spec)
        self.written_to_disk = False
        self.encoder = _ImageChunkEncoder.of(arr) if spec.is_image and pool is not None else None
        self.in_flight: list[Future] = []  # chunk writes on the image write pool, oldest first

    def add(self, values: np.ndarray) -> None:
        if len(values) == 1 and self.filled + 1 < len(self.rows):  # add_step's common case
            self.rows[self.filled] = values[0]
            self.filled += 1
            return
        done = 0
        while done < len(values):
            take = min(len(values) - done, len(self.rows) - self.filled)
            self.rows[self.filled:self.filled + take] = values[done:done + take]
            self.filled += take
            done += take
            if self.filled == len(self.rows):
                self.write()
                self.start += len(self.rows)
                self.filled = self.new_from = self.written = 0
                if self.in_flight:  # the pool still reads the old rows
                    self.rows = np.empty_like(self.rows)

    def write(self) -> None:
        """Write the buffered rows not yet on disk (whole chunks unless flushing a partial one)."""
        if self.written == self.filled:
            return
        end = self.start + self.filled
        if self.arr.shape[0] < end:
            self.arr.resize((end, *self.spec.shape))
        if self.encoder is None:
            self.arr[self.start:end] = self.rows[: self.filled]
        else:
            self._submit_chunks()
        self.written = self.filled
        self.written_to_disk = True
        self.stats.merge(rows_stats(self.spec, self.rows[self.new_from:self.filled]))
        self.new_from = self.filled

    def _submit_chunks(self) -> None:
        """Queue the chunks holding rows written:filled on the image write pool.

        A partial last chunk (only from a flush, which waits for it) is padded with zeros, as
        zarr pads chunks that reach past the array's end.
        """
        chunk_len = self.spec.chunk_len
        store, array_path = self.arr.store_path.store, self.arr.store_path.path
        for lo in range(self.written - self.written % chunk_len, self.filled, chunk_len):
            self.rows[self.filled:lo + chunk_len] = 0
            key = self.arr.metadata.encode_chunk_key(((self.start + lo) // chunk_len, 0, 0, 0))
            self.in_flight.append(self.pool.submit(
                _store_chunk, store, f"{array_path}/{key}", self.encoder, self.rows[lo:lo + chunk_len]))
        self.wait(keep=IMAGE_CHUNKS_IN_FLIGHT)

    def wait(self, keep: int = 0, raise_errors: bool = True) -> None:
        """Wait until at most `keep` chunk writes are in flight; a failed write's error is raised."""
        while len(self.in_flight) > keep:
            error = self.in_flight.pop(0).exception()
            if error is not None and raise_errors:
                raise error


class EpisodeWriter:
    """Streams one episode into the store; nothing is visible to readers until `commit`."""

    def __init__(self, store: EpisodeStore, source: str, start_time: float, task: str):
        self._store = store
        self.source, self.start_time, self.task = source, start_time, task
        self.n_steps = 0
        self._last_timestamp: float | None = None
        first_row = store.n_steps
        # A pool per episode (not per process): its threads end with the episode, and a process
        # forked meanwhile does not inherit a pool whose threads it lacks.
        self._pool = (ThreadPoolExecutor(IMAGE_WRITE_THREADS, thread_name_prefix="episode-store-image")
                      if any(spec.is_image for spec in store.keys.values()) else None)
        self._buffers = {k: _KeyBuffer(spec, store._data[k], first_row, self._pool)
                         for k, spec in store.keys.items()}

    def _check_open(self) -> None:
        if self._store._writer is not self:
            raise DatasetError("this episode was already committed or discarded")

    def _add(self, rows: dict, single: bool) -> None:
        self._check_open()
        valid = validate_rows(self._store.keys, rows, self.n_steps, self._last_timestamp, single)
        with _writing(self._store.path):  # a full buffer is written to disk
            for key, values in valid.items():
                self._buffers[key].add(values)
        if len(valid["timestamp"]):
            self._last_timestamp = float(valid["timestamp"][-1])
            self.n_steps += len(valid["timestamp"])

    def add_step(self, step: dict) -> None:
        """Add one step: {key: value of the key's per-step shape}."""
        self._add(step, single=True)

    def add_steps(self, steps: dict) -> None:
        """Add T steps: {key: array (T, *shape)}; all validated before any is buffered."""
        self._add(steps, single=False)

    @property
    def stats(self) -> dict[str, RunningStats]:
        return {k: b.stats for k, b in self._buffers.items()}

    def flush(self) -> None:
        """Write buffered rows to disk (still uncommitted), e.g. periodically from a recorder."""
        self._check_open()
        with _writing(self._store.path):
            for buffer in self._buffers.values():
                buffer.write()
            self._wait_for_writes(raise_errors=True)

    def _wait_for_writes(self, raise_errors: bool) -> None:
        """Wait for every queued image chunk write; raise the first failure if asked."""
        for buffer in self._buffers.values():
            buffer.wait(raise_errors=raise_errors)

    def _end(self) -> None:
        """Close the episode to further writes once every queued chunk write has finished."""
        self._wait_for_writes(raise_errors=False)
        self._store._writer = None
        if self._pool is not None:
            self._pool.shutdown()

    def commit(self, success: bool | int | None = None) -> int:
        """Make the episode visible; returns its index. success: None (unknown), False/True."""
        self._check_open()
        code = _success_code(success)
        if self.n_steps == 0:
            raise DatasetError("cannot commit an episode without steps")
        self.flush()
        self._end()
        return self._store._commit(self, code)

    def discard(self) -> None:
        """Drop the episode; rows it already wrote are trimmed from disk."""
        self._check_open()
        self._end()  # trim after the last chunk write has landed
        if any(buffer.written_to_disk for buffer in self._buffers.values()):
            self._store.trim_uncommitted()
