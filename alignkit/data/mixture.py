"""Mixing sources by weight: how many rows each gives, which rows, and in what order."""

from __future__ import annotations

import logging
import math
from fractions import Fraction

import numpy as np
from datasets import Dataset, Value, concatenate_datasets

from alignkit.data.sources import DataError

log = logging.getLogger(__name__)


def mixture_counts(sizes: list[int], weights: list[float], size: int | None = None) -> list[int]:
    """Rows each source gives to a mixture of `size` rows; by default the most at which no source repeats a row.

    Source i's share is w_i / sum(w) and its count size * share, rounded by largest remainders (ties to the
    earlier source), so that the counts add up to `size` exactly. The arithmetic is in exact fractions: in floats
    a size * share that is a whole number can land a hair below it and lose a row to the floor.
    """
    total = sum(map(Fraction, weights))
    shares = [Fraction(w) / total for w in weights]
    if size is None:
        size = min(math.floor(n / share) for n, share in zip(sizes, shares, strict=True))
    exact = [size * share for share in shares]
    counts = [math.floor(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: size - sum(counts)]:
        counts[i] += 1
    return counts


def mixture_rows(sizes: list[int], counts: list[int], seed: int) -> list[tuple[int, int]]:
    """(source, row) pairs of a mixture, in their shuffled order.

    A source of n rows gives each row count // n times, plus a random count % n of its rows once more: a random
    subset when it has enough rows, even repeats when its share asks for more. Each source draws from its own
    stream of `seed` and the order from another, so a source's rows depend on nothing but the seed and its place
    in the list (not on the other sources' sizes, nor on the order they were loaded in).
    """
    streams = np.random.SeedSequence(seed).spawn(len(sizes) + 1)
    picked: list[tuple[int, int]] = []
    for i, (n, count) in enumerate(zip(sizes, counts, strict=True)):
        extra = np.random.default_rng(streams[i]).permutation(n)[: count % n]
        rows = np.concatenate([np.tile(np.arange(n), count // n), extra])
        picked += [(i, int(row)) for row in rows]
    order = np.random.default_rng(streams[-1]).permutation(len(picked))
    return [picked[j] for j in order]


def _fill(column: str) -> object:
    """The value of a column that some sources of a mixture lack: a margin of 0 is what no margin means."""
    return 0.0 if column == "margin" else None


def _aligned(parts: list[Dataset], names: list[str]) -> list[Dataset]:
    """The parts with the same columns in the same order and types, so that they concatenate.

    Columns that only some sources have (a margin, a prompt's metadata) are filled in the others.
    """
    null = Value("null")  # a column of only nulls, which takes any other column's type
    features = {}
    for part in parts:
        for column in part.column_names:
            if features.get(column, null) == null:
                features[column] = Value("float64") if column == "margin" else part.features[column]
    out = []
    for name, part in zip(names, parts, strict=True):
        for column in features.keys() - set(part.column_names):
            part = part.add_column(column, [_fill(column)] * len(part), feature=features[column])
        for column in part.column_names:
            # integer margins in a JSON file, and columns of only nulls
            if (column == "margin" or part.features[column] == null) and part.features[column] != features[column]:
                part = part.cast_column(column, features[column])
        mismatched = [c for c in features if part.features[c] != features[c]]
        if mismatched:
            first = next(n for n, p in zip(names, parts, strict=True) if mismatched[0] in p.column_names)
            raise DataError(
                f"{name}: column '{mismatched[0]}' holds {part.features[mismatched[0]]}, but in {first} it holds "
                f"{features[mismatched[0]]}; every source of a mixture must give each column one type: drop the "
                "column, or write it the same way in every source"
            )
        out.append(part.select_columns(list(features)))
    return out


def mix(parts: list[Dataset], counts: list[int], seed: int, names: list[str]) -> Dataset:
    """The mixture of `parts` with `counts` rows from each, shuffled by `seed`; logs what each source gave.

    `names` say which source each part is in the log and in errors, e.g. "data.train[1] (hub:org/set[train])".
    """
    sizes = [len(part) for part in parts]
    offsets = np.cumsum([0, *sizes[:-1]])
    rows = mixture_rows(sizes, counts, seed)
    mixed = concatenate_datasets(_aligned(parts, names)).select([int(offsets[i]) + row for i, row in rows])
    for name, n, count in zip(names, sizes, counts, strict=True):
        share = f"{count} rows ({count / len(mixed):.1%} of {len(mixed)})"
        if count == 0:
            log.warning(f"{name}: gives no rows (its share of {len(mixed)} rounds to 0); raise its weight or the size")
        elif count > n:
            times = f"{count // n}" if count % n == 0 else f"{count // n} or {count // n + 1}"
            log.info(f"{name}: {share}, each of its {n} rows {times} times")
        else:
            log.info(f"{name}: {share}, {'all' if count == n else 'a random subset'} of its {n} rows, none repeated")
    return mixed
