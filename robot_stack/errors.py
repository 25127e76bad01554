"""User-facing errors: the CLI prints their message as one line, without a traceback."""


class RobotStackError(Exception):
    """Base class for errors caused by bad input or configuration, not by bugs."""


class DatasetError(RobotStackError):
    """A dataset path, its schema or data written to it is invalid."""


class ConfigError(RobotStackError):
    """A spec, config file or command-line option is invalid."""
