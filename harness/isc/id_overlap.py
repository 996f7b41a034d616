"""Do the scored ids meet the ground truth's? Ids that never match score 0 without a word.

A predictions file whose ids carry `.jpg`, descriptor files passed in the wrong order, or files of
another benchmark share no id with the ground truth, and every metric then says 0 as if the method
had failed. `disjoint_ids` names such a side and its likely cause (for the caller to refuse);
`partial_overlap` counts the ids that only partly meet (for a warning).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from harness.isc.types import GroundTruth

# A trailing `.jpg`, `.png`, `.jpeg`, ... on an id that names an image file.
_EXTENSION = re.compile(r"\.[A-Za-z][A-Za-z0-9]{0,4}$")


@dataclass
class ScoredIds:
    """The ids on the scored side: each query and reference id as it appears (one per prediction
    for a predictions file, one per descriptor for descriptor files), and where they come from."""

    query: np.ndarray
    reference: np.ndarray
    query_source: str
    reference_source: str
    # Descriptor files hold every candidate: a ground-truth id missing there can never be found.
    complete: bool


def _unique(ids) -> set[str]:
    return set(np.asarray(ids, dtype=str).tolist())


def _bare(identifier: str) -> str:
    """The id without a folder or a file extension, in lower case."""
    return _EXTENSION.sub("", PurePosixPath(identifier.replace("\\", "/")).name).lower()


def _likely_cause(
    scored: set[str], expected: set[str], other_side: set[str], gt_source: str
) -> str:
    """Why no id of `scored` is among `expected` (the ground truth's ids of the same side)."""
    swapped = sorted(scored & other_side)
    if swapped:
        return (
            f"queries and references look swapped ({swapped[0]!r} is on the other side in "
            f"{gt_source})"
        )
    bare_expected = {}
    for identifier in sorted(expected):
        bare_expected.setdefault(_bare(identifier), identifier)
    for identifier in sorted(scored):
        match = bare_expected.get(_bare(identifier))
        if match is not None:
            return (
                f"ids differ in form ({identifier!r} here, {match!r} in {gt_source}); write ids "
                "as image names without folder or extension"
            )
    return (
        f"the files seem to come from different benchmarks ({min(scored)!r} here, "
        f"{min(expected)!r} in {gt_source})"
    )


def _found_in(ids, expected) -> np.ndarray:
    """For each id of `ids`, whether it is one of `expected`: one vectorized lookup of integer
    keys (harness.isc.codes), not a set of millions of Python strings."""
    import pandas as pd

    from harness.isc.codes import id_keys, lookup

    keys, expected_keys = id_keys(ids, expected)
    return lookup(keys, pd.unique(expected_keys))[1]


def _count_distinct(ids) -> int:
    import pandas as pd

    from harness.isc.codes import id_keys

    return len(pd.unique(id_keys(ids)[0]))


def disjoint_ids(gt: GroundTruth, ids: ScoredIds, gt_source: str) -> str | None:
    """A sentence naming the sides (queries, references) where no scored id is a ground-truth id,
    and the likely cause; None when both sides meet. References are checked only when the ground
    truth has true pairs."""
    sides = [("query", ids.query, ids.query_source, gt.queries, gt.reference)]
    if gt.n_gt:
        sides.append(("reference", ids.reference, ids.reference_source, gt.reference, gt.queries))
    disjoint = [side for side in sides if len(side[1]) and not _found_in(side[1], side[3]).any()]
    if not disjoint:
        return None
    what = " and ".join(
        f"none of the {_count_distinct(scored):,} {side} ids in {source}"
        for side, scored, source, _, _ in disjoint
    )
    _, scored, _, expected, other_side = disjoint[0]
    return (
        f"{what} is in {gt_source}, so every metric would be 0: "
        f"{_likely_cause(_unique(scored), _unique(expected), _unique(other_side), gt_source)}"
    )


def partial_overlap(
    gt: GroundTruth, ids: ScoredIds, gt_source: str, *, restrict_to_gt_queries: bool
) -> list[str]:
    """Sentences counting the ids that only partly meet: scored queries absent from the ground
    truth (false positives, or dropped), and for descriptor files the ground-truth pairs whose
    query or reference has no descriptor (never found)."""
    warnings = []
    listed = _found_in(ids.query, gt.queries)
    if not listed.all():
        absent = _count_distinct(np.asarray(ids.query)[~listed])
        total = _count_distinct(ids.query)
        fate = (
            "are left out (--restrict-to-gt-queries)"
            if restrict_to_gt_queries
            else "count as false positives, as in isc2021 (--restrict-to-gt-queries drops them)"
        )
        what = "their candidates" if ids.complete else f"their {int((~listed).sum()):,} predictions"
        warnings.append(
            f"{absent:,} of {total:,} query ids in {ids.query_source} are not in {gt_source}; "
            f"{what} {fate}"
        )
    if ids.complete and gt.n_gt:
        no_query = ~_found_in(gt.query, ids.query)
        no_reference = ~_found_in(gt.reference, ids.reference)
        lost = no_query | no_reference
        if lost.any():
            warnings.append(
                f"{int(lost.sum()):,} of {gt.n_gt:,} ground-truth pairs in {gt_source} can never "
                f"be found: {int(no_query.sum()):,} have no query descriptor in "
                f"{ids.query_source}, {int(no_reference.sum()):,} no reference descriptor in "
                f"{ids.reference_source}"
            )
    return warnings
