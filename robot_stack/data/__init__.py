"""Episode store: crash-safe, append-only Zarr v3 datasets of robot episodes (see store.py)."""

from robot_stack.data.check import CheckReport, check, format_info, info
from robot_stack.data.schema import KeySpec, standard_keys
from robot_stack.data.store import SCHEMA_VERSION, SOURCES, EpisodeStore, EpisodeWriter

__all__ = ["CheckReport", "EpisodeStore", "EpisodeWriter", "KeySpec", "SCHEMA_VERSION", "SOURCES",
           "check", "format_info", "info", "standard_keys"]
