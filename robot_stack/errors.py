"""User-facing errors: the CLI prints their message as one line, without a traceback."""
import argparse
from typing import NoReturn


class RobotStackError(Exception):
    """Base class for errors caused by bad input or configuration, not by bugs."""


class DatasetError(RobotStackError):
    """A dataset path, its schema or data written to it is invalid."""


class ConfigError(RobotStackError):
    """A spec, config file or command-line option is invalid."""


def seed_value(text: str) -> int:
    """argparse type of every --seed: a whole number >= 0, the seeds numpy's and MuJoCo's random
    generators take (a negative one fails deep inside them, with a traceback)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text!r}")
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad command line answered in one line (`prog: error: ...`, exit 2)
    instead of the usage block and the error; subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")
