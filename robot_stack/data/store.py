"""Crash-safe, append-only episode store: one Zarr v3 group per dataset.

Layout (diffusion_policy ReplayBuffer convention, readable with plain zarr):

    <root>/zarr.json           attributes: format, schema_version, schema, task, robot, generator, stats
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
provided: zarr does not fsync, so this protects against process crashes and kills.

One writer at a time: mode "a" and create take an exclusive flock on the dataset directory (no
lock file, so the hierarchy stays pure zarr). Readers take no lock and see committed episodes only:
they read episode_ends first, then data.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
import zarr.storage._local as zarr_local_store
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.buffer import default_buffer_prototype

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


class EpisodeStore:
    """A dataset of episodes. Use `create` or `open`, not the constructor."""

    def __init__(self, path, mode: str, lock_fd: int | None):
        self.path = path
        self.mode = mode
        self._lock_fd = lock_fd
        self._writer: EpisodeWriter | None = None
        self.refresh()

    # ---- opening -------------------------------------------------------------------------
    @classmethod
    def create(cls, path, keys: dict[str, KeySpec], *, task: str, robot: dict,
               generator: dict | None = None) -> EpisodeStore:
        """Create an empty dataset at a local directory that does not exist or is empty."""
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
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.parent / f".{path.name}.creating-{uuid.uuid4().hex}"
        root = zarr.open_group(staging, mode="w-", attributes=attrs)
        for name, spec in keys.items():
            root.create_array(
                f"data/{name}", shape=(0, *spec.shape), chunks=(spec.chunk_len, *spec.shape),
                dtype=spec.dtype, fill_value=0, compressors=[IMAGE_COMPRESSOR] if spec.is_image else "auto",
                chunk_key_encoding=IMAGE_CHUNK_KEYS if spec.is_image else None)
        root.create_array("meta/episode_ends", shape=(0,), chunks=(META_CHUNK,), dtype="int64", fill_value=-1)
        for name, dtype in META_DTYPES.items():
            root.create_array(f"meta/episode_{name}", shape=(0,), chunks=(META_CHUNK,), dtype=dtype,
                              fill_value=META_FILL[name])
        try:
            os.rename(staging, path)  # replaces an empty directory, fails on a non-empty one
        except OSError as exc:
            shutil.rmtree(staging)
            raise DatasetError(f"cannot create {path}: {exc}") from None
        lock_fd = _lock(path)
        return cls(path, "a", lock_fd)

    @classmethod
    def open(cls, path, mode: str = "r") -> EpisodeStore:
        """Open a dataset: mode "r" (local path or fsspec URL) or "a" (local path, to append)."""
        if mode not in ("r", "a"):
            raise DatasetError(f"mode must be 'r' or 'a', got {mode!r}")
        if _is_url(path):
            if mode == "a":
                raise DatasetError(f"{path}: appending needs a local path (atomic renames, flock)")
            return cls(path, mode, None)
        path = Path(path)
        if not (path / "zarr.json").is_file():
            raise DatasetError(f"{path} is not a dataset (no zarr.json)")
        lock_fd = _lock(path) if mode == "a" else None
        try:
            return cls(path, mode, lock_fd)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise

    def refresh(self) -> None:
        """Re-read the dataset: episode_ends first, then the data arrays (see module docstring)."""
        if self._writer is not None:
            raise DatasetError("cannot refresh while an episode is being written")
        zarr_mode = "r" if self.mode == "r" else "r+"
        try:
            root = zarr.open_group(self.path if _is_url(self.path) else str(self.path), mode=zarr_mode,
                                   use_consolidated=False)
            attrs = root.attrs.asdict()
            if attrs.get("format") != FORMAT:
                raise DatasetError(f"{self.path} is a zarr group but not a robot_stack dataset")
            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise DatasetError(f"{self.path}: schema version {attrs.get('schema_version')} not supported")
            self.keys: dict[str, KeySpec] = {k: KeySpec.from_json(v) for k, v in attrs["schema"].items()}
            self._ends_array = root["meta/episode_ends"]
            self._raw_ends = self._ends_array[:]
            self._meta = {name: root[f"meta/episode_{name}"] for name in META_DTYPES}
            self._data = {k: root[f"data/{k}"].with_config(ARRAY_CONFIG) for k in self.keys}
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise DatasetError(f"{self.path} is not a readable dataset: {exc!r}") from None
        self._root, self._attrs = root, attrs
        self.episode_ends = committed_prefix(self._raw_ends).astype(np.int64)
        self._stats = self._load_stats()
        if self.mode == "a" and self._stats_steps != self.n_steps:
            self._write_stats()

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
        return self._attrs["generator"]

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
        meta = {name: arr[:n] for name, arr in self._meta.items()}
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
        return self._data[key][start:max(start, stop)]

    def episode(self, i: int) -> dict[str, np.ndarray]:
        if not -self.n_episodes <= i < self.n_episodes:
            raise DatasetError(f"episode {i} out of range: dataset has {self.n_episodes} episodes")
        i %= self.n_episodes
        start = int(self.episode_ends[i - 1]) if i else 0
        return {k: self._data[k][start:int(self.episode_ends[i])] for k in self.keys}

    def stats(self) -> dict[str, dict[str, np.ndarray]]:
        """mean/std/min/max (float64) per key over every committed step; see stats.py for images.

        Empty while the dataset has no steps.
        """
        return {k: s.summary() for k, s in self._stats.items() if s.count}

    # ---- statistics ----------------------------------------------------------------------
    def _load_stats(self) -> dict[str, RunningStats]:
        """Stored stats, caught up from the data when they cover fewer steps than are committed."""
        stored = self._attrs.get("stats") or {}
        self._stats_steps = int(stored.get("steps", -1))
        if 0 < self._stats_steps <= self.n_steps and set(stored.get("keys", {})) == set(self.keys):
            stored_stats = {k: RunningStats.from_json(stored["keys"][k]) for k in self.keys}
            return self.compute_stats(self._stats_steps, stored_stats)
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
        self._write_stats()

    def iter_blocks(self, key: str, start: int = 0):
        """Committed rows start: of a key in blocks of bounded memory (whole chunks)."""
        block = _block_rows(self.keys[key])
        for lo in range(start, self.n_steps, block):
            yield self._data[key][lo:min(lo + block, self.n_steps)]

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
        self._write_stats()
        return index


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


def _chunk_encoder(arr) -> Blosc | None:
    """A numcodecs Blosc that encodes a uint8 chunk exactly as the array's codecs (bytes -> blosc)
    do, or None when the array has other codecs (its chunks then go through zarr)."""
    codecs = arr.metadata.codecs
    if arr.dtype != np.uint8 or len(codecs) != 2 or not isinstance(codecs[0], BytesCodec) \
            or not isinstance(codecs[1], BloscCodec):
        return None
    blosc = codecs[1]
    shuffle = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE, "bitshuffle": Blosc.BITSHUFFLE}
    return Blosc(cname=blosc.cname.value, clevel=blosc.clevel, shuffle=shuffle[blosc.shuffle.value],
                 blocksize=blosc.blocksize, typesize=blosc.typesize)


def _store_chunk(path: Path, encoder: Blosc, chunk: np.ndarray) -> None:
    """Runs on the image write pool: compress one chunk and write it atomically."""
    zarr_local_store._put(path, default_buffer_prototype().buffer.from_bytes(encoder.encode(chunk)))


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
            self.rows[: self.filled] = arr[self.start:first_row]
        self.new_from = self.filled   # rows before this are committed or already in the stats
        self.written = self.filled    # rows before this are on disk
        self.stats = RunningStats.empty(spec)
        self.written_to_disk = False
        self.encoder = _chunk_encoder(arr) if spec.is_image and pool is not None else None
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
        array_dir = self.arr.store_path.store.root / self.arr.store_path.path
        for lo in range(self.written - self.written % chunk_len, self.filled, chunk_len):
            self.rows[self.filled:lo + chunk_len] = 0
            key = self.arr.metadata.encode_chunk_key(((self.start + lo) // chunk_len, 0, 0, 0))
            self.in_flight.append(self.pool.submit(
                _store_chunk, array_dir / key, self.encoder, self.rows[lo:lo + chunk_len]))
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
