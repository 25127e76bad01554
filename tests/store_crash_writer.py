"""Writer process for the store crash tests: deterministic episodes, optional self-SIGKILL.

Episode i of a seed always has the same content, so a test can regenerate what every committed
episode must hold. With KILL_AT_WRITE=N the process kills itself with SIGKILL around the N-th key
zarr's LocalStore writes (KILL_MODE: "before" it, "after" it, or "mid": half the bytes in the
temporary file, no rename), so kills land at every point of create, streaming writes and commits.
Each episode_ends chunk write prints "ENDS <write number>" so a test can aim at commits.
Usage: python store_crash_writer.py PATH SEED N_EPISODES
"""

import itertools
import os
import signal
import sys
import threading
import uuid

import numpy as np
import zarr.storage._local as local_store

from robot_stack.data import EpisodeStore, KeySpec, standard_keys

OBS_DIM, ACT_DIM = 5, 3
FLUSH_EVERY = 7  # streaming episodes flush partial chunks this often, like a recorder


def make_keys() -> dict[str, KeySpec]:
    """Small chunks, so episodes span several chunks and commits rewrite shared chunks."""
    keys = {name: KeySpec(spec.shape, spec.dtype, chunk_steps=chunk)
            for (name, spec), chunk in zip(standard_keys(OBS_DIM, ACT_DIM).items(), (16, 8, 32, 64, 16))}
    keys["camera/rgb"] = KeySpec((6, 8, 3), "uint8", chunk_steps=1)
    keys["sensors/force"] = KeySpec((2,), "float64", chunk_steps=10)
    return keys


def episode_data(seed: int, index: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([seed, index])
    steps = int(rng.integers(5, 30))
    terminal = np.zeros(steps, bool)
    terminal[-1] = bool(index % 3 == 0)
    return {
        "observation": rng.normal(size=(steps, OBS_DIM)).astype(np.float32),
        "action": rng.uniform(-1, 1, size=(steps, ACT_DIM)).astype(np.float32),
        "reward": rng.normal(size=steps).astype(np.float32),
        "terminal": terminal,
        "timestamp": 1000.0 * index + 0.05 * np.arange(steps),
        "camera/rgb": rng.integers(0, 256, size=(steps, 6, 8, 3), dtype=np.uint8),
        "sensors/force": rng.normal(size=(steps, 2)),
    }


def episode_meta(index: int) -> dict:
    return {"source": ("teleop", "scripted", "sim")[index % 3], "start_time": 1e9 + index,
            "success": (None, True, False)[index % 3]}


def write_episodes(path, seed: int, n_episodes: int) -> None:
    """Create or continue the dataset up to n_episodes; even ones streamed step by step."""
    if os.path.exists(os.path.join(path, "zarr.json")):
        store = EpisodeStore.open(path, "a")
    else:
        store = EpisodeStore.create(path, make_keys(), task="crash-test", robot={"name": "test"})
    with store:
        for index in range(store.n_episodes, n_episodes):
            data, meta = episode_data(seed, index), episode_meta(index)
            if index % 2:
                store.append_episode(data, source=meta["source"], success=meta["success"],
                                     start_time=meta["start_time"])
                continue
            writer = store.begin_episode(meta["source"], start_time=meta["start_time"])
            for t in range(len(data["timestamp"])):
                writer.add_step({k: v[t] for k, v in data.items()})
                if t % FLUSH_EVERY == FLUSH_EVERY - 1:
                    writer.flush()
            writer.commit(meta["success"])


def _install_kill_switch(kill_at: int, mode: str) -> None:
    original_put = local_store._put
    counter = itertools.count(1)
    counter_lock = threading.Lock()  # zarr writes the chunks of one call from several threads

    def put(path, value, exclusive=False):
        with counter_lock:
            writes = next(counter)
        if writes == kill_at and mode == "mid":
            partial = path.with_suffix(f".{uuid.uuid4().hex}.partial")
            path.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(bytes(value.as_buffer_like())[: len(value) // 2])
        if writes == kill_at and mode in ("before", "mid"):
            os.kill(os.getpid(), signal.SIGKILL)
        result = original_put(path, value, exclusive)
        if path.as_posix().endswith("meta/episode_ends/c/0"):
            print("ENDS", writes, flush=True)
        if writes == kill_at and mode == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    local_store._put = put


if __name__ == "__main__":
    _install_kill_switch(int(os.environ.get("KILL_AT_WRITE", "0")), os.environ.get("KILL_MODE", "after"))
    write_episodes(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
