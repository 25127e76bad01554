"""Append throughput of the episode store, against plain numpy writes of the same bytes.

    python benchmarks/store_write.py [--seconds 2] [--frames 200] [--repeats 3] [--out DIR]

(a) state-and-action steps (17 + 6 float32, reward, terminal, timestamp) through the streaming
    writer, one add_step per step as a recorder does, 1000-step episodes. Baseline: the same rows
    copied into preallocated numpy arrays and np.save'd per key at the end of each episode.
(b) 640x480x3 uint8 frames (a smooth moving scene: gradient sky, checker floor, moving shapes;
    not noise, which no compressor shrinks) plus the low-dim keys, 100-frame episodes. Baseline:
    the raw frame bytes appended to one file per episode.
Each is timed twice: until the write calls return (data in the page cache) and including fsync
of every file written (durable); store and numpy runs alternate, medians are reported.
Footprint is bytes allocated on disk.
"""

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np

from robot_stack.data import EpisodeStore, KeySpec, standard_keys

OBS_DIM, ACT_DIM = 17, 6
LOWDIM_EPISODE_STEPS, IMAGE_EPISODE_STEPS = 1000, 100
HEIGHT, WIDTH = 480, 640
DISTINCT_FRAMES = 48  # pre-rendered and cycled, so scene synthesis is not timed


def render_scene(i: int) -> np.ndarray:
    """A frame like a simple MuJoCo render: smooth gradients, a checker floor, moving bodies."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    horizon = HEIGHT * 0.6
    sky = np.stack([90 + 60 * y / horizon, 140 + 50 * y / horizon, 220 - 20 * y / horizon], -1)
    depth = np.maximum(y - horizon, 1)
    checker = ((np.floor((x - WIDTH / 2) / depth * 8 + i * 0.3) + np.floor(400 / depth)) % 2)
    floor = np.stack([60 + 60 * checker, 70 + 60 * checker, 80 + 50 * checker], -1) * (0.6 + y[..., None] / HEIGHT / 2)
    frame = np.where((y < horizon)[..., None], sky, floor)
    cx, cy = WIDTH / 2 + 150 * np.sin(i / 9), horizon - 40 + 15 * np.cos(i / 5)
    body = ((x - cx) / 90) ** 2 + ((y - cy) / 35) ** 2 < 1
    shade = 1 - 0.4 * np.clip(((x - cx) + (y - cy)) / 120, -1, 1)
    frame[body] = np.stack([200 * shade, 120 * shade, 60 * shade], -1)[body]
    leg = (np.abs(x - cx - 40 * np.sin(i / 4) + (y - cy) * 0.3) < 8) & (y > cy) & (y < cy + 90)
    frame[leg] = (180, 100, 50)
    # lighting falls off from the centre, so neighbouring pixels differ slightly, as in renders
    vignette = 1 - 0.35 * (((x - WIDTH / 2) / WIDTH) ** 2 + ((y - HEIGHT / 2) / HEIGHT) ** 2)
    return np.clip(frame * vignette[..., None], 0, 255).astype(np.uint8)


def lowdim_step(rng_state: np.ndarray, t: int) -> dict:
    return {"observation": rng_state[t % len(rng_state), :OBS_DIM],
            "action": rng_state[t % len(rng_state), OBS_DIM:],
            "reward": np.float32(0.1 * (t % 7)), "terminal": False, "timestamp": 0.02 * t}


def disk_bytes(path: Path) -> int:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_blocks * 512 for p in files)


def fsync_tree(path: Path) -> None:
    for p in [path] if path.is_file() else path.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)


def timed(write, path: Path) -> tuple[float, float]:
    """(seconds until the writes returned, seconds including fsync of every file)."""
    start = time.perf_counter()
    write()
    written = time.perf_counter() - start
    fsync_tree(path)
    return written, time.perf_counter() - start


def store_writer(path: Path, keys: dict, n_steps: int, episode_steps: int, step_fn) -> None:
    with EpisodeStore.create(path, keys, task="bench", robot={"name": "bench"}) as store:
        for first in range(0, n_steps, episode_steps):
            writer = store.begin_episode("sim")
            for t in range(first, min(first + episode_steps, n_steps)):
                writer.add_step(step_fn(t))
            writer.commit()


def numpy_writer(path: Path, keys: dict, n_steps: int, episode_steps: int, step_fn) -> None:
    path.mkdir()
    for first in range(0, n_steps, episode_steps):
        length = min(episode_steps, n_steps - first)
        buffers = {k: np.empty((length, *s.shape), s.dtype) for k, s in keys.items()}
        for t in range(first, first + length):
            for key, value in step_fn(t).items():
                buffers[key][t - first] = value
        for key, values in buffers.items():
            np.save(path / f"{first}_{key.replace('/', '_')}.npy", values)


def raw_frame_writer(path: Path, n_frames: int, frames: list[np.ndarray]) -> None:
    path.mkdir()
    for first in range(0, n_frames, IMAGE_EPISODE_STEPS):
        with open(path / f"{first}.rgb", "wb") as f:
            for t in range(first, min(first + IMAGE_EPISODE_STEPS, n_frames)):
                f.write(frames[t % len(frames)].tobytes())


def compare(name: str, unit: str, n: int, out: Path, repeats: int, write_ours, write_base, footprint) -> None:
    """Alternate store and numpy runs `repeats` times (the machine is shared) and report medians."""
    ours, base = [], []
    for _ in range(repeats):
        for results, write, path in ((ours, write_ours, out / "ours"), (base, write_base, out / "base")):
            shutil.rmtree(path, ignore_errors=True)
            results.append(timed(lambda: write(path), path))
    ours_bytes, base_bytes = footprint(out / "ours"), disk_bytes(out / "base")
    for label, i in (("until write returns", 0), ("including fsync", 1)):
        t_ours, t_base = np.median([r[i] for r in ours]), np.median([r[i] for r in base])
        print(f"{name} [{label}]: store {n / t_ours:,.0f} {unit}/s, numpy {n / t_base:,.0f} {unit}/s, "
              f"store/numpy = {t_base / t_ours:.2f}")
    print(f"{name} on disk: store {ours_bytes / 1e6:.1f} MB, numpy {base_bytes / 1e6:.1f} MB, "
          f"store/numpy = {ours_bytes / base_bytes:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="approx. duration of one low-dim run")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs; medians reported")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/store_write"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    rows = np.random.default_rng(0).normal(size=(4096, OBS_DIM + ACT_DIM)).astype(np.float32)
    lowdim_keys = standard_keys(OBS_DIM, ACT_DIM)

    def lowdim(t):
        return lowdim_step(rows, t)

    # (a) size the run from a short probe so that one store run takes about --seconds
    start = time.perf_counter()
    store_writer(args.out / "probe", lowdim_keys, 2000, LOWDIM_EPISODE_STEPS, lowdim)
    n_steps = max(2000, int(args.seconds * 2000 / (time.perf_counter() - start)))
    shutil.rmtree(args.out / "probe")
    compare(f"(a) state+action, {n_steps} steps", "steps", n_steps, args.out, args.repeats,
            lambda p: store_writer(p, lowdim_keys, n_steps, LOWDIM_EPISODE_STEPS, lowdim),
            lambda p: numpy_writer(p, lowdim_keys, n_steps, LOWDIM_EPISODE_STEPS, lowdim), disk_bytes)

    # (b) camera frames with the low-dim keys alongside; footprint of the frames only
    frames = [render_scene(i) for i in range(DISTINCT_FRAMES)]
    image_keys = {**lowdim_keys, "camera/rgb": KeySpec((HEIGHT, WIDTH, 3), "uint8")}

    def image_step(t):
        return {**lowdim(t), "camera/rgb": frames[t % len(frames)]}
    compare(f"(b) 640x480x3 frames, {args.frames} frames", "frames", args.frames, args.out, args.repeats,
            lambda p: store_writer(p, image_keys, args.frames, IMAGE_EPISODE_STEPS, image_step),
            lambda p: raw_frame_writer(p, args.frames, frames),
            lambda p: disk_bytes(p / "data" / "camera"))
    print(f"(cores available: {len(os.sched_getaffinity(0))}; load average {os.getloadavg()[0]:.1f})")
    shutil.rmtree(args.out)


if __name__ == "__main__":
    main()
