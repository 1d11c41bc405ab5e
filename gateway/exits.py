"""The exit statuses of the ``s3-upload-gateway`` command, and the errors that choose them.

Two families of commands, two conventions. ``serve`` and ``hash-token`` run on the gateway's side
and exit as daemons and Unix tools do. The commands that call a running gateway (``upload``,
``reap-uploads``, the ``aws s3api`` mirror: ``upload-part``, ``create-multipart-upload``,
``complete-multipart-upload``, ``abort-multipart-upload``, ``list-parts``,
``list-multipart-uploads``, ``upload-part-copy``; and ``demo``) exit as the AWS CLI v2 does, so
that scripts written for ``aws s3api`` read them the same way.

=====  ==============  =====================================================================
code   name            meaning
=====  ==============  =====================================================================
0      OK              Success.
1      FAILED          ``serve``: the gateway could not serve (an address it cannot listen on,
                       such as a port already in use) or stopped on a failure.
2      CONFIG          ``serve``, ``hash-token``: a setting (``GATEWAY_*``, a flag, the AWS
                       configuration: ``AWS_PROFILE``, its files, its ``credential_process``)
                       the gateway cannot start with, or a bad command line; and
                       ``s3-upload-gateway`` run without a command or with an unknown one.
130    INTERRUPTED     Ctrl-C (SIGINT), 128 + 2 as for any process a signal ends; the AWS CLI's
                       too. ``upload`` first aborts the multipart upload it started.
252    USAGE           A bad command line: an unknown option, a malformed or missing value, a
                       combination that does not go, an input file (``upload FILE``,
                       ``--body``, ``file://``) that cannot be read. Nothing was sent.
253    CLIENT_CONFIG   The command line is right but the configuration the command runs with is
                       not: the token file (``--token-file``) or ``$GATEWAY_TOKEN``, the CA
                       bundle (``--ca-bundle``), the client certificate and key
                       (``--client-cert``, ``--client-key``), ``$GATEWAY_ENDPOINT_URL``.
                       Nothing was sent.
254    SERVICE_ERROR   The gateway, or S3 behind it, answered with an error.
255    CONNECTION      The gateway could not be reached (refused, TLS failure, timeout), or the
                       call failed on the way; the AWS CLI's catch-all.
=====  ==============  =====================================================================

Why 253 for the files and variables the options name: the AWS CLI v2 exits 253 when "the system
environment or configuration was invalid [...] missing configuration or credentials prevented the
command from running", and these are this CLI's credentials and trust (where the AWS CLI reads
``~/.aws/credentials`` and ``AWS_CA_BUNDLE``). They are usually mounted or injected (a Kubernetes
Secret, a CI variable), so the fix is in the environment, not in the command line: a CronJob whose
token Secret is missing exits 253 however right its arguments are. A file that is the command's
input (the file to upload) is part of the command line: 252.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class ExitCode(enum.IntEnum):
    OK = 0
    #: ``serve``: the gateway could not serve, or stopped on a failure.
    FAILED = 1
    #: ``serve``, ``hash-token``: a setting the gateway cannot start with, or a bad command line.
    CONFIG = 2
    #: Ctrl-C (SIGINT): 128 + 2.
    INTERRUPTED = 130
    #: A bad command line: an unknown option, a missing or malformed value, an unreadable input.
    USAGE = 252
    #: The command's own configuration (token, CA bundle, client certificate, GATEWAY_*
    #: variables) cannot be used.
    CLIENT_CONFIG = 253
    #: The gateway (or S3 behind it) answered with an error.
    SERVICE_ERROR = 254
    #: The gateway could not be reached, or the call failed on the way.
    CONNECTION = 255


class CommandError(Exception):
    """A failure a command reports in one line, and exits with :attr:`code`."""

    code: ClassVar[ExitCode] = ExitCode.CONNECTION


class UsageError(CommandError):
    """A bad command line (:attr:`ExitCode.USAGE`); nothing was sent."""

    code = ExitCode.USAGE


class ClientConfigError(CommandError):
    """The configuration the command runs with cannot be used (:attr:`ExitCode.CLIENT_CONFIG`);
    nothing was sent."""

    code = ExitCode.CLIENT_CONFIG


class ConnectionFailure(CommandError):
    """The gateway could not be reached (:attr:`ExitCode.CONNECTION`); it answered nothing."""

    code = ExitCode.CONNECTION
