"""MuJoCo simulation tasks (dm_control suite), behaviour policies and reference returns."""

from sim.tasks import TASK_NAMES, SimError, SimTask, make_task

__all__ = ["TASK_NAMES", "SimError", "SimTask", "make_task"]
