"""Printing results as ``aws s3api`` prints them: json, text and table, filtered by ``--query``.

A port of the aws CLI's formatters, awscli 1.46.3 (the aws CLI of the test extras; tests/test_cli.py
compares the output with awscli's own for sample data): :class:`Output` follows
``awscli.formatter`` (``JSONFormatter``, ``TextFormatter``, ``TableFormatter``), :func:`text_lines`
follows ``awscli.text.format_text``, and :func:`table_text` ``awscli.table.MultiTable`` with
``awscli.table``'s ``Styler`` (``--color off``) or ``ColorizedStyler`` (``--color on``, and
``auto`` when stdout is a terminal): cell values bright blue, the edges of nested sections dim
yellow. Timestamps print as the aws CLI v1 prints them by default: verbatim as S3 sent them
(:func:`format_timestamp`).
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import shutil
import sys
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from botocore.model import Shape
from botocore.paginate import PageIterator
from botocore.utils import set_value_from_jmespath
from jmespath.parser import ParsedResult

from gateway import convert


def format_timestamp(value: dt.datetime, shape: Shape) -> str:
    """A timestamp as the aws CLI v1 prints it by default: verbatim as S3 sent it, i.e. ISO 8601
    with milliseconds and Z in XML bodies, RFC 822 in headers."""
    default = "rfc822" if convert.in_headers(shape) else "iso8601"
    form = shape.serialization.get("timestampFormat") or default
    if form == "rfc822":
        return email.utils.format_datetime(value, usegmt=True)
    if form == "unixTimestamp":
        return str(int(value.timestamp()))
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def json_default(value: object) -> str:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


@dataclass(frozen=True)
class Output:
    """Prints results as the aws CLI's json, text and table formatters do."""

    form: str
    query: ParsedResult | None
    title: str
    stream: IO[str] = field(default_factory=lambda: sys.stdout)
    #: ``--color``: on, off, or auto (on when ``stream`` is a terminal); tables only.
    color: str = "auto"

    def emit(self, data: Any) -> None:
        self._write(self._filter(data))

    def emit_pages(self, pages: PageIterator) -> None:
        """A paginated result: whole for json and table, page by page for text."""
        if self.form != "text":
            self.emit(pages.build_full_result())
            return
        for i, page in enumerate(pages):
            current = pages.non_aggregate_part if i == 0 else {}
            for result_key in pages.result_keys:
                set_value_from_jmespath(current, result_key.expression, result_key.search(page))
            self._write(self._filter(current))
        if pages.resume_token:
            self._write(self._filter({"NextToken": {"NextToken": pages.resume_token}}))

    def _filter(self, data: Any) -> Any:
        return data if self.query is None else self.query.search(data)

    def _write(self, data: Any) -> None:
        if self.form == "json":
            if data != {}:
                text = json.dumps(data, indent=4, default=json_default, ensure_ascii=False)
                self.stream.write(text + "\n")
        elif self.form == "text":
            self.stream.writelines(line + "\n" for line in text_lines(data))
        else:
            self.stream.write(table_text(self.title, data, colored=self._colored()))
        self.stream.flush()

    def _colored(self) -> bool:
        if self.color == "auto":
            try:
                return self.stream.isatty()
            except (AttributeError, ValueError):
                return False
        return self.color == "on"


def _scalar(value: Any) -> bool:
    return not isinstance(value, dict | list)


def text_lines(
    item: Any, identifier: str | None = None, scalar_keys: list[str] | None = None
) -> Iterator[str]:
    """The aws CLI's text format: scalars of a dict tab-separated in key order, nested values
    after them, each line prefixed with the upper-cased key it came from."""
    if isinstance(item, dict):
        yield from _text_dict(item, identifier, scalar_keys)
    elif isinstance(item, list):
        yield from _text_list(item, identifier)
    else:
        yield str(item)


def _text_dict(
    item: dict[str, Any], identifier: str | None, keys: list[str] | None
) -> Iterator[str]:
    if keys is None:
        scalars = [str(v) for k, v in sorted(item.items()) if _scalar(v)]
        nested = [(k, v) for k, v in sorted(item.items()) if not _scalar(v)]
    else:
        scalars = [str(item.get(k, "")) for k in keys]
        nested = [(k, item[k]) for k in sorted(set(item) - set(keys))]
    if scalars:
        yield "\t".join(([identifier.upper()] if identifier is not None else []) + scalars)
    for key, value in nested:
        yield from text_lines(value, key)


def _text_list(items: list[Any], identifier: str | None) -> Iterator[str]:
    if any(isinstance(el, dict) for el in items):
        keys = sorted(
            {k for el in items if isinstance(el, dict) for k, v in el.items() if _scalar(v)}
        )
        for element in items:
            yield from text_lines(element, identifier, keys)
        return
    scalars = [el for el in items if _scalar(el)]
    if scalars:
        if identifier is not None:
            yield from (f"{identifier.upper()}\t{el}" for el in scalars)
        else:
            yield "\t".join(str(el) for el in scalars)
    for nested in (el for el in items if not _scalar(el)):
        yield from text_lines(nested, identifier)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WFA" else 1 for c in text)


@dataclass
class _Section:
    title: str
    indent: int
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)

    def widths(self) -> list[int]:
        columns = [self.headers] if self.headers else []
        columns += self.rows
        return (
            [max(_width(row[i]) for row in columns) for i in range(len(columns[0]))]
            if columns
            else []
        )

    def total_width(self) -> int:
        cells = sum(w + 4 for w in self.widths()) + 2 + 2 * self.indent
        return max(_width(self.title) + 2 + 2 * self.indent, cells)

    def scaled_widths(self, total: int) -> list[int]:
        natural = [w + 4 for w in self.widths()]
        if not natural:
            return []
        scaled = [round(total / sum(natural) * w) for w in natural]
        off = sum(scaled) - total
        while off:
            order = range(len(scaled)) if off > 0 else reversed(range(len(scaled)))
            for i in order:
                step = 1 if off > 0 else -1
                scaled[i] -= step
                off -= step
                if not off:
                    break
        return scaled


class _TableBuilder:
    """Lays out data in sections as the aws CLI's table formatter does."""

    def __init__(self) -> None:
        self.sections: list[_Section] = []

    def build(self, title: str | None, data: Any, indent: int = 0) -> None:
        if not data:
            return
        if title is not None:
            self.sections.append(_Section(title, indent))
        if isinstance(data, list):
            self._list(title, data, indent)
        elif isinstance(data, dict):
            self._dict(data, indent)

    def _add_row(self, row: Sequence[Any]) -> None:
        self.sections[-1].rows.append([str(v) for v in row])

    def _list(self, title: str | None, data: list[Any], indent: int) -> None:
        if isinstance(data[0], dict):
            self._list_of_dicts(title or "", data, indent)
            return
        for item in data:
            if _scalar(item):
                self._add_row([item])
            elif all(_scalar(el) for el in item):
                self._add_row(item)
            else:
                self.build(None, item)

    def _dict(self, data: dict[str, Any], indent: int) -> None:
        headers = sorted(k for k, v in data.items() if _scalar(v))
        if len(headers) == 1:
            self._add_row([headers[0], data[headers[0]]])
        elif headers:
            self.sections[-1].headers = headers
            self._add_row([data[k] for k in headers])
        for key in sorted(k for k, v in data.items() if not _scalar(v)):
            self.build(key, data[key], indent + 1)

    def _list_of_dicts(self, title: str, data: list[dict[str, Any]], indent: int) -> None:
        headers = sorted({k for el in data for k, v in el.items() if _scalar(v)})
        nested = sorted({k for el in data for k, v in el.items() if not _scalar(v)})
        self.sections[-1].headers = headers
        for i, element in enumerate(data):
            if i and nested:
                self.sections.append(_Section(title, indent, headers))
            self._add_row([element.get(h, "") for h in headers])
            for key in nested:
                if key in element:
                    self.build(key, element[key], indent + 1)


#: awscli's ColorizedStyler: colorama's BRIGHT + BLUE for cell values, DIM + YELLOW for the edges
#: of nested sections, each followed by RESET_ALL.
_VALUE_STYLE = ("\x1b[1m\x1b[34m", "\x1b[0m")
_EDGE_STYLE = ("\x1b[2m\x1b[33m", "\x1b[0m")
#: colorama's RESET_ALL, which awscli's ``autoreset`` writes after each of its writes.
_RESET = "\x1b[0m"


def table_lines(title: str, data: Any, terminal_width: int | None = None) -> list[str]:
    """The aws CLI's table format, without colours, line by line."""
    return [edge + line + edge for edge, line in _table(title, data, terminal_width, False)]


def table_text(
    title: str, data: Any, terminal_width: int | None = None, *, colored: bool = False
) -> str:
    """The aws CLI's table format as it writes it. Coloured, awscli initialises colorama with
    ``autoreset``, which writes a reset after each write of the table's: after the top rule, and
    after each of the four writes of every other line (left edges, the line, right edges, the
    newline); the bytes are the same here."""
    layout = _table(title, data, terminal_width, colored)
    if not colored:
        return "".join(f"{edge}{line}{edge}\n" for edge, line in layout)
    if not layout:
        return ""
    (_, rule), *lines = layout
    written = [rule, "\n", _RESET]
    for edge, line in lines:
        written += [edge, _RESET, line, _RESET, edge, _RESET, "\n", _RESET]
    return "".join(written)


def _table(
    title: str, data: Any, terminal_width: int | None, colored: bool
) -> list[tuple[str, str]]:
    """The lines of the table, each with the edges of its section on either side ("" for the
    top rule and the outermost sections)."""
    if terminal_width is None:
        terminal_width = shutil.get_terminal_size().columns
    builder = _TableBuilder()
    builder.build(title, data)
    sections = builder.sections
    if not sections:
        return []
    width = max(s.total_width() for s in sections)
    if width > terminal_width:
        sections = [_vertical(s) for s in sections]
        width = max(s.total_width() for s in sections)
    lines = [("", "-" * width)]
    for section in sections:
        edge = _styled("|", _EDGE_STYLE, colored) * section.indent
        inner = width - 2 * section.indent
        lines += [(edge, line) for line in _section_lines(section, inner, colored)]
    return lines


def _styled(text: str, style: tuple[str, str], colored: bool) -> str:
    return f"{style[0]}{text}{style[1]}" if colored else text


def _vertical(section: _Section) -> _Section:
    if len(section.rows) != 1 or not section.headers:
        return section
    rows = [[h, v] for h, v in zip(section.headers, section.rows[0], strict=True)]
    return _Section(section.title, section.indent, [], rows)


def _section_lines(section: _Section, width: int, colored: bool = False) -> list[str]:
    lines = []
    if section.title:
        lines.append(_centered(section.title, width, "|"))
        if not section.headers and not section.rows:
            lines.append("+" + "-" * (width - 2) + "+")
    widths = section.scaled_widths(width)
    rule = "".join(
        ("+" if i == 0 else "") + "-" * (w - 2 + (i > 0)) + "+" for i, w in enumerate(widths)
    )
    if section.headers:
        lines.append(rule)
        lines.append(
            "".join(
                _centered(h, w, "|" if i == 0 else "")
                for i, (w, h) in enumerate(zip(widths, section.headers, strict=True))
            )
        )
    if section.rows:
        lines.append(rule)
        lines += [
            "".join(
                _left(v, w, "|" if i == 0 else "", _styled(v, _VALUE_STYLE, colored))
                for i, (w, v) in enumerate(zip(widths, row, strict=True))
            )
            for row in section.rows
        ]
        lines.append(rule)
    return lines


def _centered(text: str, length: int, left: str) -> str:
    start = length // 2 - _width(text) // 2 - 1
    head = left + " " * start + text
    return head + " " * (length - 1 - (len(left) + start + _width(text))) + "|"


def _left(text: str, length: int, left: str, shown: str | None = None) -> str:
    """``text`` left-aligned in a cell ``length`` wide; ``shown`` (``text`` styled) is written in
    its place."""
    padding = 2 if length - (_width(text) + 2 + len(left) + 1) >= 0 else 0
    head = left + " " * padding + (text if shown is None else shown)
    return head + " " * (length - len(left) - padding - _width(text) - 1) + "|"
