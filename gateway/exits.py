"""The exit statuses of the ``s3-upload-gateway`` command, and the error that means a bad command
line.

``serve`` and ``hash-token`` exit 0, 1 when the gateway could not serve or stopped on a failure,
and 2 for a configuration it cannot start with. The commands that call a running gateway
(``upload``, ``reap-uploads`` and the ``aws s3api`` mirror) exit as the AWS CLI does: 252 for a
bad command line, 254 when the gateway answered with an error, 255 when it could not be reached.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    OK = 0
    #: The gateway could not serve, or stopped on a failure.
    FAILED = 1
    #: A setting the gateway cannot start with.
    CONFIG = 2
    #: A bad command line: an unknown option, a missing or malformed value.
    USAGE = 252
    #: The gateway (or S3 behind it) answered with an error.
    SERVICE_ERROR = 254
    #: The gateway could not be reached, or the call failed on the way.
    CONNECTION = 255


class UsageError(Exception):
    """A bad command line (:attr:`ExitCode.USAGE`); nothing was sent."""


class ConnectionFailure(Exception):
    """The gateway could not be reached (:attr:`ExitCode.CONNECTION`); it answered nothing."""
