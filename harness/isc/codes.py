"""Integer keys for string ids, so joins on (query, reference) pairs run on int64 arrays.

Hashing or sorting numpy unicode arrays is slow (pandas boxes every element). Ids such as `Q00000`
or `R000000` are short ASCII strings: their code points fit in one 64-bit integer per id, so the
key is the id's own bytes (exact, no hashing). Longer or non-ASCII ids fall back to pandas
factorize codes over all the arrays together; equal ids get equal keys either way.

Joins then only look keys up in the *small* side (the ground truth) with sorted arrays and
a hash table; the millions of predictions are never factorized.
"""

from __future__ import annotations

import numpy as np

# An odd 64-bit constant (the golden ratio's) to mix two keys into one hash.
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _packed(ids: np.ndarray) -> np.ndarray | None:
    """One int64 per id holding its (at most 8) ASCII bytes, or None if the ids do not fit."""
    if ids.dtype.kind != "U":
        return None
    width = ids.dtype.itemsize // 4
    if width > 8:
        return None
    if len(ids) == 0 or width == 0:
        return np.zeros(len(ids), dtype=np.int64)
    points = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), width)
    if points.max() >= 128:
        return None
    packed = np.zeros((len(ids), 8), dtype=np.uint8)
    packed[:, :width] = points
    return packed.view(np.int64).ravel()


def id_keys(*arrays: np.ndarray) -> list[np.ndarray]:
    """An int64 key per id, equal iff the ids are equal, consistent across all `arrays`."""
    import pandas as pd

    arrays = [np.asarray(a, dtype=str) for a in arrays]
    packed = [_packed(a) for a in arrays]
    if all(p is not None for p in packed):
        return packed
    joined = np.concatenate(arrays).astype(object)
    codes, _ = pd.factorize(joined)
    return np.split(codes.astype(np.int64), np.cumsum([len(a) for a in arrays])[:-1])


def lookup(keys: np.ndarray, unique: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Position of each key in `unique` (distinct keys) and whether it is there at all.

    A hash table over the small side: `searchsorted` of millions of unsorted keys is several
    times slower (cache misses)."""
    import pandas as pd

    position = pd.Index(unique).get_indexer(keys)
    found = position >= 0
    position[~found] = 0
    return position.astype(np.int64, copy=False), found


def first_repeated_pair(a: np.ndarray, b: np.ndarray) -> tuple[int, int] | None:
    """Rows (first, repeat) of the earliest repeat of an (a, b) pair in row order, or None.

    One sort of a 64-bit hash of the pair finds candidates; they are then compared exactly."""
    with np.errstate(over="ignore"):
        hashed = a.astype(np.uint64) * _MIX + b.astype(np.uint64)
    sorted_hashes = np.sort(hashed)
    repeated_hashes = np.unique(sorted_hashes[1:][sorted_hashes[1:] == sorted_hashes[:-1]])
    if len(repeated_hashes) == 0:
        return None
    rows = np.flatnonzero(lookup(hashed, repeated_hashes)[1])
    # Exact check on the few candidate rows: group by (a, b), row order kept within a group.
    rows = rows[np.lexsort((rows, b[rows], a[rows]))]
    same = (a[rows][1:] == a[rows][:-1]) & (b[rows][1:] == b[rows][:-1])
    if not same.any():
        return None  # only hash collisions
    repeat = int(rows[1:][same].min())
    first = int(np.flatnonzero((a == a[repeat]) & (b == b[repeat]))[0])
    return first, repeat
