"""Byte sizes: the binary units, and the one way sizes people write are read and shown.

``8MiB``, ``8 MiB``, ``8MB``, ``8M`` and ``8388608`` are all the same size: every unit is binary.
``KB``, ``MB``, ``GB`` and ``TB`` mean KiB, MiB, GiB and TiB, as in the AWS CLI's S3 settings
(``multipart_chunksize = 8MB`` is 8 MiB), so a size copied from an AWS configuration means the
same here, in the upload command's options and in the authorization policy alike.
"""

from __future__ import annotations

import re
from fractions import Fraction

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

#: Longer texts are refused before they are parsed.
_LONGEST = 64
_FACTORS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?", re.IGNORECASE | re.ASCII)


def parse_size(text: str) -> int:
    """The number of bytes ``text`` names: digits, optionally a fraction, optionally a unit
    (``K``, ``M``, ``G``, ``T``, each optionally followed by ``B`` or ``iB``; case does not
    matter). Raises ValueError, whose message quotes ``text``, for anything else or a size that
    is not a whole number of bytes."""
    match = _SIZE.fullmatch(text.strip()) if len(text) <= _LONGEST else None
    if match is None:
        raise ValueError(f"{text!r} is not a size such as 8MiB, 512KiB or 1048576")
    number, unit = match.group(1), match.group(2)
    size = Fraction(number) * _FACTORS[unit.upper()]
    if size.denominator != 1:
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(size)


def format_size(count: float) -> str:
    """Bytes with a binary unit, for people: ``512 B``, ``12.0 MiB``, ``3.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
