"""Integer codes for string ids, so joins on (query, reference) pairs run on int64 arrays.

Hashing numpy unicode arrays directly is slow (pandas boxes every element). Ids such as `Q00000`
or `R000000` are short ASCII strings: their UCS-4 code points fit in one uint64 per id, which
pandas factorizes by hash an order of magnitude faster. Longer or non-ASCII ids take the general
(slower) path; the codes are identical either way.
"""

from __future__ import annotations

import numpy as np


def _packed_keys(ids: np.ndarray) -> np.ndarray | None:
    """One uint64 per id holding its (at most 8) ASCII bytes, or None if the ids do not fit."""
    width = ids.dtype.itemsize // 4
    if ids.dtype.kind != "U" or width > 8 or len(ids) == 0:
        return None
    points = ids.view(np.uint32).reshape(len(ids), width)
    if points.max(initial=0) >= 128:
        return None
    packed = np.zeros((len(ids), 8), dtype=np.uint8)
    packed[:, :width] = points
    return packed.view(np.uint64).ravel()


def factorize(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Codes in [0, n_distinct) for the ids of several arrays, consistent across them."""
    import pandas as pd

    lengths = [len(a) for a in arrays]
    joined = (
        np.concatenate([np.asarray(a, dtype=str) for a in arrays]) if arrays else np.zeros(0, str)
    )
    keys = _packed_keys(joined)
    codes, uniques = pd.factorize(keys if keys is not None else joined.astype(object))
    codes = codes.astype(np.int64)
    return list(np.split(codes, np.cumsum(lengths)[:-1])), len(uniques)


def pair_codes(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """One int64 per (query, reference) pair; equal pairs get equal codes."""
    (query_codes,), _ = factorize(query)
    (reference_codes,), n_references = factorize(reference)
    return query_codes * n_references + reference_codes
