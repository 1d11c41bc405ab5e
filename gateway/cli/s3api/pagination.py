"""Auto-pagination of the list commands, as ``aws s3api`` paginates: ``--starting-token``,
``--page-size``, ``--max-items`` and ``--no-paginate``."""

from __future__ import annotations

import argparse
import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.cli.s3api.model import Command
from gateway.exits import UsageError


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


@dataclass(frozen=True)
class Pagination:
    """botocore's paginator config and the paging options of one run."""

    config: Mapping[str, Any]
    starting_token: str | None
    page_size: int | None
    max_items: int | None

    def keys(self, name: str) -> list[str]:
        value = self.config.get(name, [])
        return list(value) if isinstance(value, list) else [value]


@dataclass
class Pages:
    """The pages of a paginated command, as botocore's PageIterator yields them."""

    pages: list[dict[str, Any]]
    result_keys: list[str]
    non_aggregate: dict[str, Any]
    resume_token: str | None

    def full_result(self) -> dict[str, Any]:
        """What botocore's build_full_result makes of the pages (the json and table output)."""
        complete: dict[str, Any] = {}
        for page in self.pages:
            for key in self.result_keys:
                value = page.get(key)
                if value is None:
                    continue
                if key not in complete:
                    complete[key] = list(value) if isinstance(value, list) else value
                elif isinstance(value, list):
                    complete[key].extend(value)
                else:
                    complete[key] = complete[key] + value
        complete.update(self.non_aggregate)
        if self.resume_token is not None:
            complete["NextToken"] = self.resume_token
        return complete


def requested_paging(command: Command, args: argparse.Namespace) -> Pagination | None:
    config = command.paginator
    if config is None:
        return None
    pagination = Pagination(config, args.starting_token, args.page_size, args.max_items)
    manual = [
        name
        for name in pagination.keys("input_token") + pagination.keys("limit_key")
        if getattr(args, name, None) is not None
    ]
    if args.paginate and not manual:
        return pagination
    options = ("starting-token", "page-size", "max-items")
    used = [f"--{name}" for name in options if getattr(args, name.replace("-", "_")) is not None]
    if used:
        raise UsageError(
            "Cannot specify --no-paginate along with pagination arguments: " + ", ".join(used)
        )
    return None


def paginate(
    fetch: Callable[[Mapping[str, Any]], dict[str, Any]],
    params: Mapping[str, Any],
    pagination: Pagination,
) -> Pages:
    """Call page after page as botocore's paginator does, honouring --starting-token, --page-size
    and --max-items (whose NextToken is botocore's: base64 JSON of the input tokens and
    ``boto_truncate_amount``)."""
    inputs, primary = pagination.keys("input_token"), pagination.keys("result_key")[0]
    request = dict(params)
    token: dict[str, Any] = dict.fromkeys(inputs)
    skip = 0
    if pagination.starting_token is not None:
        token, skip = decode_token(pagination.starting_token, inputs)
        _inject_token(request, token)
    if pagination.page_size is not None:
        request[pagination.keys("limit_key")[0]] = pagination.page_size
    pages = Pages([], pagination.keys("result_key"), {}, None)
    total = 0
    while True:
        page = fetch(request)
        if not pages.pages:
            _skip_items(page, pages.result_keys, skip)
            pages.non_aggregate = {k: page.get(k) for k in pagination.keys("non_aggregate_keys")}
        else:
            skip = 0
        pages.pages.append(page)
        items = page.get(primary) or []
        limit = pagination.max_items
        if limit is not None and total + len(items) > limit:
            keep = limit - total
            page[primary] = items[:keep]
            pages.resume_token = encode_token({**token, "boto_truncate_amount": keep + skip})
            return pages
        total += len(items)
        next_token = _next_token(page, pagination)
        if all(value is None for value in next_token.values()):
            return pages
        if limit is not None and total == limit:
            pages.resume_token = encode_token(next_token)
            return pages
        if next_token == token:
            raise UsageError(f"The same next token was received twice: {next_token}")
        token = next_token
        _inject_token(request, token)


def _skip_items(page: dict[str, Any], result_keys: list[str], skip: int) -> None:
    """On the first page after a --starting-token, drop the items already printed."""
    if not skip:
        return
    primary, *others = result_keys
    if isinstance(page.get(primary), list):
        page[primary] = page[primary][skip:]
    for key in others:
        if isinstance(page.get(key), list):
            page[key] = []


def _next_token(page: Mapping[str, Any], pagination: Pagination) -> dict[str, Any]:
    more = pagination.config.get("more_results")
    if more is not None and not page.get(more):
        return {}
    pairs = zip(pagination.keys("output_token"), pagination.keys("input_token"), strict=True)
    return {input_key: page.get(output_key) or None for output_key, input_key in pairs}


def _inject_token(request: dict[str, Any], token: Mapping[str, Any]) -> None:
    for name, value in token.items():
        if value is not None and value != "None":
            request[name] = value
        else:
            request.pop(name, None)


def encode_token(token: Mapping[str, Any]) -> str:
    return base64.b64encode(json.dumps(token).encode()).decode()


def decode_token(value: str, inputs: list[str]) -> tuple[dict[str, Any], int]:
    """The input tokens and truncation amount of a NextToken."""
    try:
        token = json.loads(base64.b64decode(value, validate=True))
        skip = int(token.pop("boto_truncate_amount", 0))
    except (ValueError, TypeError, AttributeError, binascii.Error):
        raise UsageError(f"Bad starting token: {value}") from None
    if not isinstance(token, dict) or set(token) != set(inputs):
        raise UsageError(f"Bad starting token: {value}")
    return token, skip
