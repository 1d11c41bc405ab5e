"""Auto-pagination of the list commands, as ``aws s3api`` paginates.

botocore's own paginator (:class:`botocore.paginate.Paginator`, configured by the operation's
``paginators-1`` entry) makes the calls, page after page, and keeps ``--max-items`` and
``--starting-token`` in its own ``NextToken`` format (:class:`botocore.paginate.TokenEncoder`);
its page iterator is what the aws CLI's formatters print (:mod:`gateway.cli.s3api.output`).
``--no-paginate``, or an S3 paging option (``--max-parts``, ``--part-number-marker``, …), makes
one call instead, as in the aws CLI (``awscli.customizations.paginate``).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from typing import Any

from botocore.paginate import PageIterator, Paginator

from gateway.cli.s3api.model import Command
from gateway.cli.s3api.params import check_params
from gateway.exits import UsageError

_OPTIONS = ("starting-token", "page-size", "max-items")


def add_paging_options(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--starting-token",
        metavar="<value>",
        help="Where to start paginating: the NextToken of a previous truncated output.",
    )
    group.add_argument(
        "--page-size",
        type=int,
        metavar="<value>",
        help="The size of each page the gateway is asked for; does not change the output.",
    )
    group.add_argument(
        "--max-items",
        type=int,
        metavar="<value>",
        help="The most items to print; a NextToken is printed when there are more.",
    )


def requested_paging(command: Command, args: argparse.Namespace) -> dict[str, Any] | None:
    """The ``PaginationConfig`` of botocore's paginator the options ask for, or None for one
    call: the command does not paginate, ``--no-paginate`` is given, or an S3 paging option is."""
    config = command.paginator
    if config is None:
        return None
    manual = _keys(config, "input_token") + _keys(config, "limit_key")
    if args.paginate and not any(getattr(args, name, None) is not None for name in manual):
        settings = {
            "StartingToken": args.starting_token,
            "PageSize": args.page_size,
            "MaxItems": args.max_items,
        }
        return {name: value for name, value in settings.items() if value is not None}
    used = [f"--{name}" for name in _OPTIONS if getattr(args, name.replace("-", "_")) is not None]
    if used:
        raise UsageError(
            "Cannot specify --no-paginate along with pagination arguments: " + ", ".join(used)
        )
    return None


def paginate(
    command: Command,
    fetch: Callable[[Mapping[str, Any]], dict[str, Any]],
    params: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> PageIterator:
    """The pages of ``command``, fetched lazily by botocore's paginator: ``fetch`` gets the
    parameters of each call (``params`` with the page's tokens and limit, checked as the options
    are) and returns the page."""
    assert command.paginator is not None

    def call(**page_params: Any) -> dict[str, Any]:
        return fetch(check_params(command, page_params))

    paginator = Paginator(call, command.paginator, command.model)
    return paginator.paginate(**params, PaginationConfig=dict(settings))


def _keys(config: Mapping[str, Any], name: str) -> list[str]:
    value = config.get(name, [])
    return list(value) if isinstance(value, list) else [value]
