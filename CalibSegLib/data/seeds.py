"""Seed lists of the shifted sample variants: ``"1-40,45"`` and back (no array library)."""

from __future__ import annotations

from collections.abc import Sequence

from CalibSegLib.errors import CalibSegError


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """Parse ``"1-40,45,50-52"`` into a sorted list of distinct integers.

    Parameters
    ----------
    text
        Comma-separated integers and inclusive ranges ``a-b``, or a sequence of ints.
    """
    if not isinstance(text, str):
        return sorted({int(v) for v in text})
    seeds: set[int] = set()
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                cut = part.index("-", 1)
                lo, hi = int(part[:cut]), int(part[cut + 1:])
                if hi < lo:
                    raise ValueError
                seeds.update(range(lo, hi + 1))
            else:
                seeds.add(int(part))
        except ValueError as exc:
            raise CalibSegError(
                f"Cannot read seed list {text!r}: write integers and ranges such as '1-40,45'."
            ) from exc
    if not seeds:
        raise CalibSegError(f"Seed list {text!r} is empty; give at least one seed, e.g. '1-40'.")
    return sorted(seeds)


def format_seeds(seeds: Sequence[int]) -> str:
    """The compact text form of a seed list (inverse of :func:`parse_seeds`)."""
    values = sorted({int(s) for s in seeds})
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)
