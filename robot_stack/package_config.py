"""The config files shipped with robot_stack (robot specs, teleop mappings, node parameters).

In a checkout they are in config/ beside the packages. A (non-editable) install puts them in the
ROS 2 package's share directory, share/robot_stack/config under the install prefix, which the
ament index finds (AMENT_PREFIX_PATH); without ament_index_python, sys.prefix is that prefix.
"""
from __future__ import annotations

import sys
from pathlib import Path

from robot_stack.errors import ConfigError

PACKAGE = "robot_stack"
CHECKOUT_CONFIG = Path(__file__).resolve().parent.parent / "config"


def config_dirs() -> list[Path]:
    """Where config files are looked for, in order: the checkout (so that its edits count),
    the ament index's share directory of the package, sys.prefix/share/robot_stack/config."""
    dirs = [CHECKOUT_CONFIG]
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:  # the core library works without ROS 2
        pass
    else:
        try:
            dirs.append(Path(get_package_share_directory(PACKAGE)) / "config")
        except (PackageNotFoundError, OSError):  # not in the index, or AMENT_PREFIX_PATH unset
            pass
    dirs.append(Path(sys.prefix) / "share" / PACKAGE / "config")
    return list(dict.fromkeys(dirs))


def config_file(name: str) -> Path:
    """The path of the shipped config file `name` (e.g. "teleop_keyboard.yaml")."""
    dirs = config_dirs()
    for directory in dirs:
        if (directory / name).is_file():
            return directory / name
    raise ConfigError(f"config file {name!r} not found; looked in {', '.join(map(str, dirs))} "
                      "(give the file's path instead)")
