"""The aws CLI's shorthand syntax for structure and map options: ``k=v,k2=v2``, ``k=[a,b]``,
``k=[{a=1},{a=2}]``, ``k={a=1}``, quoted values, and at the top level ``k=a,b`` for a list.

It follows the grammar of ``awscli.shorthand.ShorthandParser`` in awscli 1.46.3 (the aws CLI of
the test extras; tests/test_cli.py compares the two), written anew rather than copied. Left out:
values read from files with ``k@=file://…``, the "second instance of key" error (a later key
wins) and awscli's error messages (a ValueError says where parsing stopped).
"""

from __future__ import annotations

import re
from typing import Any

_SHORTHAND_KEY = re.compile(r"\s*([^=,\[\]{}'\"\s]+)\s*=")


_UNQUOTED_END = frozenset(",]}")


def parse_shorthand(text: str) -> dict[str, Any]:
    """Parse the aws CLI's shorthand syntax: ``k=v,k2=v2``, ``k=[a,b]``, ``k=[{a=1},{a=2}]``,
    ``k={a=1}``, quoted values, and at the top level ``k=a,b`` for a list."""
    parser = _Shorthand(text)
    result = parser.pairs(top=True)
    parser.finish()
    return result


class _Shorthand:
    def __init__(self, text: str) -> None:
        self._text = text
        self._pos = 0

    def pairs(self, top: bool = False) -> dict[str, Any]:
        result: dict[str, Any] = {}
        while True:
            match = _SHORTHAND_KEY.match(self._text, self._pos)
            if match is None:
                raise ValueError(f"expected key=value at position {self._pos}: {self._text!r}")
            self._pos = match.end()
            value = self._value()
            if top and isinstance(value, str):
                value = self._csv_tail(value)
            result[match.group(1)] = value
            if not self._take(","):
                return result

    def finish(self) -> None:
        if self._text[self._pos :].strip():
            raise ValueError(f"unexpected text at position {self._pos}: {self._text!r}")

    def _csv_tail(self, first: str) -> str | list[str]:
        values = [first]
        while self._peek() == "," and not _SHORTHAND_KEY.match(self._text, self._pos + 1):
            self._pos += 1
            values.append(self._scalar())
        return values[0] if len(values) == 1 else values

    def _value(self) -> Any:
        if self._take("["):
            items: list[Any] = []
            while not self._take("]"):
                if items and not self._take(","):
                    raise ValueError(f"expected ',' or ']' at position {self._pos}")
                items.append(self._value())
            return items
        if self._take("{"):
            mapping = self.pairs()
            if not self._take("}"):
                raise ValueError(f"expected '}}' at position {self._pos}")
            return mapping
        return self._scalar()

    def _scalar(self) -> str:
        self._skip_spaces()
        quote = self._peek()
        if quote in ("'", '"'):
            return self._quoted(quote)
        start = self._pos
        while self._pos < len(self._text) and self._text[self._pos] not in _UNQUOTED_END:
            self._pos += 1
        return self._text[start : self._pos].strip()

    def _quoted(self, quote: str) -> str:
        self._pos += 1
        chars: list[str] = []
        while self._pos < len(self._text):
            char = self._text[self._pos]
            self._pos += 1
            if char == "\\" and self._pos < len(self._text):
                chars.append(self._text[self._pos])
                self._pos += 1
            elif char == quote:
                self._skip_spaces()
                return "".join(chars)
            else:
                chars.append(char)
        raise ValueError(f"unterminated quoted value: {self._text!r}")

    def _peek(self) -> str:
        return self._text[self._pos] if self._pos < len(self._text) else ""

    def _skip_spaces(self) -> None:
        while self._peek().isspace():
            self._pos += 1

    def _take(self, char: str) -> bool:
        self._skip_spaces()
        if self._peek() == char:
            self._pos += 1
            return True
        return False
