"""Continuity of recorded episodes: are an episode's samples one control period apart?

A recorded sample is taken on a sample clock: the source stamp of the stream the recorder
samples on (`data/stamp/<stream>`; for a headerless command topic, the stamp of the state it
answered), or the recorder clock (`data/timestamp`) when it samples on a timer. Consecutive
samples of an episode are contiguous when that clock advances by more than zero and less than
GAP_PERIODS control periods: a step of GAP_PERIODS or more means at least one sample is missing
(a stall, a queue overflow, a dropped message), a step of zero or less that the samples are not
one sequence (a repeated state, or rows of two episodes stitched together). Training reads each
such step as one transition, so the recorder splits or cuts episodes there
(robot_stack/recording.py) and `data check` reports any that remain.
"""

from __future__ import annotations

import numpy as np

from robot_stack.errors import ConfigError
from robot_stack.spec import JOINT_STATE, spec_from_dict

# Late or early samples within half a period still count as the next one (timer ticks and
# wall-clock stamps jitter); the same bound counts a timer's dropped ticks.
GAP_PERIODS = 1.5
REPORTED_GAPS = 3  # gaps named in `data check`'s problem line


def sample_clock(spec, sample_on: str | None) -> str:
    """The dataset key that holds the sample clock of a recording of `spec` sampled on
    `sample_on` (a stream name, or None for a timer)."""
    if sample_on is None:
        return "timestamp"
    stream = spec.streams[sample_on]
    if stream.role != "action" or stream.msg_type == JOINT_STATE:  # stamped at its source
        return f"stamp/{sample_on}"
    # A headerless command answers the newest state: the state's stamp is its clock.
    state = next((s.name for s in spec.streams.values()
                  if s.role == "observation" and s.required), sample_on)
    return f"stamp/{state}"


def contiguous(step_s: float, period_s: float) -> bool:
    """Whether a sample-clock step between two consecutive samples keeps them contiguous."""
    return 0.0 < step_s < GAP_PERIODS * period_s


def missing_samples(step_s: float, period_s: float) -> int:
    """Samples missing in a forward step of the sample clock (0 for a backward one)."""
    return max(0, int(round(step_s / period_s)) - 1)


def episode_gaps(clock: np.ndarray, period_s: float) -> np.ndarray:
    """Rows (within one episode) whose sample is not contiguous with the row before."""
    steps = np.diff(np.asarray(clock, dtype=np.float64))
    return np.flatnonzero(~((steps > 0.0) & (steps < GAP_PERIODS * period_s))) + 1


def check_store(store, problem) -> None:
    """`data check`: report episodes whose samples are not contiguous by the recording's own
    spec and rate (stored in the dataset's robot description), via problem(text). Datasets
    without a recording spec or stamps (collected in-process, synthetic) have nothing to check."""
    robot = store.robot
    if "spec" not in robot or not any(k.startswith("stamp/") for k in store.keys):
        return
    try:
        spec = spec_from_dict(robot["spec"], origin="the dataset's recording spec")
    except ConfigError as e:
        problem(f"cannot check continuity: {e}")
        return
    key = sample_clock(spec, spec.sample_on)
    if key not in store.keys:
        problem(f"cannot check continuity: the sample clock data/{key} is missing")
        return
    period = 1.0 / float(robot.get("control_rate_hz", spec.rate_hz))
    clock = store.read(key)
    ends = store.episode_ends
    found = []
    for index, (start, end) in enumerate(zip(np.concatenate([[0], ends[:-1]]), ends)):
        rows = episode_gaps(clock[start:end], period)
        found += [(index, int(row), float(clock[start + row] - clock[start + row - 1]))
                  for row in rows]
    if found:
        named = ", ".join(f"episode {i} at step {row} ({step:+.3f} s)"
                          for i, row, step in found[:REPORTED_GAPS])
        episodes = len({i for i, _, _ in found})
        problem(f"{len(found)} gap(s) in {episodes} episode(s): data/{key} steps outside "
                f"(0, {GAP_PERIODS:g}) control periods of {period:g} s, so the samples around "
                f"them are not one transition: {named}"
                + (", ..." if len(found) > REPORTED_GAPS else ""))
