"""Errors a user can fix: the CLI prints them as one line and exits with status 2."""

from __future__ import annotations


class MCRobustError(Exception):
    """Base class of every error whose message tells the user what to fix."""


class ConfigError(MCRobustError, ValueError):
    """An impossible or inconsistent setting (sizes, ranges, names)."""


class DataError(MCRobustError):
    """A data set that is missing, malformed or does not match the configuration."""


class CheckpointError(MCRobustError):
    """A checkpoint that is missing, unsafe to load, or does not fit the network."""
