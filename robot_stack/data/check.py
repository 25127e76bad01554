"""Dataset verification (`data check`) and summary (`data info`) for the CLI."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zarr

from robot_stack.data.continuity import check_store as check_continuity
from robot_stack.data.store import PARTIAL_FILE, SOURCES, EpisodeStore, _is_url

STATS_RTOL = 1e-9  # relative to the largest magnitude of a key's values


@dataclass
class CheckReport:
    """Result of `check`: `problems` left in the dataset, `repaired` what repair=True fixed."""

    path: str
    episodes: int
    steps: int
    uncommitted_steps: int
    problems: list[str] = field(default_factory=list)
    repairable: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}

    def format(self) -> str:
        """Text for `data check`: a verdict line, then one line per problem and repair."""
        verdict = "OK" if self.ok else f"{len(self.problems)} problem(s)"
        lines = [f"{self.path}: {verdict} ({self.episodes} episodes, {self.steps} steps, "
                 f"{self.uncommitted_steps} uncommitted steps)"]
        lines += [f"  repaired: {text}" for text in self.repaired]
        lines += [f"  problem{' (repairable with --repair)' if text in self.repairable else ''}: {text}"
                  for text in self.problems]
        return "\n".join(lines)


def _partial_files(path) -> list[str]:
    if _is_url(path):
        return []
    return [os.path.join(d, f) for d, _, files in os.walk(path) for f in files if PARTIAL_FILE.search(f)]


def _inspect(store: EpisodeStore, report: CheckReport) -> None:
    """Fill report.problems (and .repairable, the subset trim/stats recomputation fixes)."""
    def problem(text: str, repairable: bool = False):
        report.problems.append(text)
        if repairable:
            report.repairable.append(text)

    ends, n_eps, n_steps = store.episode_ends, store.n_episodes, store.n_steps
    raw = store._raw_ends
    if (np.diff(np.concatenate([[0], ends])) <= 0).any():
        problem("meta/episode_ends is not strictly increasing from a positive first entry")
    if (raw[n_eps:] >= 0).any():
        problem("meta/episode_ends has committed-looking entries after an unwritten (-1) one")
    elif len(raw) > n_eps:
        problem(f"meta/episode_ends has {len(raw) - n_eps} unwritten (-1) entries (crash in a commit)", True)
    for key, spec in store.keys.items():
        arr = store._data[key]
        if arr.shape[1:] != spec.shape or arr.dtype != np.dtype(spec.dtype):
            problem(f"data/{key}: {arr.shape[1:]} {arr.dtype} does not match the schema {spec.shape} {spec.dtype}")
        if arr.shape[0] < n_steps:
            problem(f"data/{key}: {arr.shape[0]} rows, but episode_ends covers {n_steps}")
        elif arr.shape[0] > n_steps:
            problem(f"data/{key}: {arr.shape[0] - n_steps} uncommitted rows after the last episode", True)
    extra = sorted(set(_array_names(store._root["data"])) - set(store.keys))
    if extra:
        problem(f"arrays under data/ not in the schema: {extra}")
    for name, arr in store._meta.items():
        if arr.shape[0] < n_eps:
            problem(f"meta/episode_{name}: {arr.shape[0]} entries for {n_eps} episodes")
        elif arr.shape[0] > n_eps:
            problem(f"meta/episode_{name}: {arr.shape[0] - n_eps} uncommitted entries", True)
    meta = store.episode_meta
    if not np.array_equal(meta["length"], np.diff(np.concatenate([[0], ends]))):
        problem("meta/episode_length does not match the differences of episode_ends")
    if not np.isin(meta["success"], (-1, 0, 1)).all():
        problem("meta/episode_success has values other than -1, 0, 1")
    if not np.isin(meta["source"], SOURCES).all():
        problem(f"meta/episode_source has values outside {SOURCES}")
    finite = True
    for key, spec in store.keys.items():
        if np.dtype(spec.dtype).kind == "f":
            bad = sum(int((~np.isfinite(rows)).sum()) for rows in store.iter_blocks(key))
            if bad:
                problem(f"data/{key}: {bad} NaN/inf values in committed steps")
                finite = False
    timestamps = store.read("timestamp")
    backwards = np.flatnonzero(np.diff(timestamps) < 0) + 1
    backwards = backwards[~np.isin(backwards, ends)]  # a new episode may restart its clock
    if len(backwards):
        problem(f"data/timestamp goes backwards within an episode at step {int(backwards[0])}")
    check_continuity(store, problem)
    if not store.stats_fresh():
        problem(f"stats cover {store._stats_steps} steps, dataset has {n_steps} (stale)", True)
    elif finite and n_steps:  # stats of non-finite data are meaningless; NaN is reported above
        stored = store.stats()
        for key, fresh in store.compute_stats().items():
            # float64 rounding of the values themselves (e.g. epoch timestamps) bounds agreement
            tolerance = STATS_RTOL * np.maximum(np.abs(fresh.min), np.abs(fresh.max)) + 1e-9
            if not all((np.abs(stored[key][s] - v) <= tolerance).all() for s, v in fresh.summary().items()):
                problem(f"stats of {key!r} do not match the data", True)
    partial = _partial_files(store.path)
    if partial:
        problem(f"{len(partial)} temporary *.partial files from an interrupted write", True)


def _array_names(group, prefix: str = "") -> list[str]:
    names = []
    for name, node in group.members():
        if isinstance(node, zarr.Array):
            names.append(prefix + name)
        else:
            names.extend(_array_names(node, prefix + name + "/"))
    return names


def check(path, repair: bool = False) -> CheckReport:
    """Verify a dataset's invariants; with repair, trim the uncommitted tail and fix stats.

    Raises DatasetError if path is not a dataset at all. Problems repair cannot fix (missing
    committed rows, NaN in data, schema mismatches) stay in the returned report's `problems`.
    """
    with EpisodeStore.open(path, "r") as store:
        report = CheckReport(str(path), store.n_episodes, store.n_steps, store.uncommitted_steps)
        _inspect(store, report)
    if not (repair and report.repairable):
        return report
    with EpisodeStore.open(path, "a") as store:
        store.trim_uncommitted()
        store.recompute_stats()
    repaired = check(path)
    repaired.repaired = report.repairable
    return repaired


def info(path) -> dict:
    """Summary of a dataset for `data info`: sizes, keys, sources, task, bytes on disk."""
    with EpisodeStore.open(path, "r") as store:
        meta = store.episode_meta
        lengths = meta["length"]
        local = not _is_url(path)
        return {
            "path": str(path),
            "episodes": store.n_episodes,
            "steps": store.n_steps,
            "uncommitted_steps": store.uncommitted_steps,
            "task": store.task,
            "robot": store.robot.get("name"),
            "generator": store.generator,
            "keys": {k: {"shape": list(s.shape), "dtype": s.dtype, "chunk_steps": s.chunk_len}
                     for k, s in store.keys.items()},
            "sources": dict(Counter(meta["source"].tolist())),
            "tasks": dict(Counter(meta["task"].tolist())),
            "success": {"success": int((meta["success"] == 1).sum()), "failure": int((meta["success"] == 0).sum()),
                        "unknown": int((meta["success"] == -1).sum())},
            "episode_length": ({"min": int(lengths.min()), "mean": float(lengths.mean()), "max": int(lengths.max())}
                               if len(lengths) else None),
            "stats_fresh": store.stats_fresh(),
            "size_bytes": (sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) if local else None),
        }


def format_info(summary: dict) -> str:
    """Text for `data info` from the dict `info` returns."""
    lines = [f"{summary['path']}: {summary['episodes']} episodes, {summary['steps']} steps, task {summary['task']!r}"
             f", robot {summary['robot']!r}"]
    if summary["uncommitted_steps"]:
        lines.append(f"  {summary['uncommitted_steps']} uncommitted steps (crash leftovers; `data check --repair`)")
    if summary["episode_length"]:
        lines.append("  episode length: min {min}, mean {mean:.1f}, max {max}".format(**summary["episode_length"]))
    lines.append(f"  sources: {summary['sources']}; success: {summary['success']}")
    for key, spec in summary["keys"].items():
        lines.append(f"  data/{key}: {spec['dtype']} {tuple(spec['shape'])} ({spec['chunk_steps']} steps/chunk)")
    if summary["generator"]:
        lines.append(f"  generator: {summary['generator']}")
    if summary["size_bytes"] is not None:
        lines.append(f"  size on disk: {summary['size_bytes'] / 1e6:.3f} MB")
    lines.append(f"  stats: {'fresh' if summary['stats_fresh'] else 'stale (`data check --repair`)'}")
    return "\n".join(lines)
