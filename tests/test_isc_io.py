"""ISC file I/O: round trips, the official layouts, and one clear error per kind of bad input."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from harness.errors import InputError
from harness.isc import (
    Descriptors,
    GroundTruth,
    Predictions,
    read_descriptors,
    read_ground_truth,
    read_predictions,
    search,
    write_descriptors,
    write_ground_truth,
    write_predictions,
)


def write(path, text):
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------


def test_ground_truth_with_distractors_and_two_references(tmp_path):
    path = write(tmp_path / "gt.csv", "query_id,reference_id\nQ1,R1\nQ2,\nQ1,R2\nQ3,R3\n")
    gt = read_ground_truth(path)
    assert gt.queries.tolist() == ["Q1", "Q2", "Q3"]
    assert list(zip(gt.query.tolist(), gt.reference.tolist(), strict=True)) == [
        ("Q1", "R1"),
        ("Q1", "R2"),
        ("Q3", "R3"),
    ]


def test_ground_truth_header_is_optional_and_round_trips(tmp_path):
    gt = read_ground_truth(write(tmp_path / "gt.csv", "Q1,R1\nQ2,\n"))
    assert gt.queries.tolist() == ["Q1", "Q2"] and gt.n_gt == 1
    write_ground_truth(tmp_path / "again.csv", gt)
    again = read_ground_truth(tmp_path / "again.csv")
    assert again.queries.tolist() == gt.queries.tolist()
    assert again.reference.tolist() == gt.reference.tolist()


@pytest.mark.parametrize(
    "text, message",
    [
        ("query_id,reference_id\nQ1,R1\nQ1,R1\n", r"gt.csv:3: duplicate"),
        ("query_id,reference_id\nQ1,R1,extra\n", r"gt.csv.*(fields|malformed)"),
        ("query,db\nQ1,R1\n", r"gt.csv:1: unknown columns"),
        ("Q1,R1\n,R2\n", r"gt.csv:2: empty query_id"),
        ("Q1,R1\nQ1,\n", r"gt.csv:1: query Q1 .*distractor"),
        ("", r"gt.csv: the file is empty"),
    ],
)
def test_bad_ground_truth(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_ground_truth(write(tmp_path / "gt.csv", text))


# ---------------------------------------------------------------------------------------------
# Predictions
# ---------------------------------------------------------------------------------------------


def test_predictions_round_trip_keeps_full_precision(tmp_path):
    scores = np.array([0.1 + 1e-12, -3.25, 1e-30])
    predictions = Predictions(query=["Q1", "Q1", "Q2"], reference=["R1", "R2", "R1"], score=scores)
    write_predictions(tmp_path / "p.csv", predictions)
    assert (tmp_path / "p.csv").read_text().splitlines()[0] == "query_id,reference_id,score"
    again = read_predictions(tmp_path / "p.csv")
    assert again.query.tolist() == ["Q1", "Q1", "Q2"]
    np.testing.assert_array_equal(again.score, scores)


def test_both_readers_parse_scores_exactly(tmp_path):
    from harness.isc.io import _read_predictions_checked

    scores = np.random.default_rng(0).standard_normal(5000) * 10.0 ** np.arange(-20, 30, 0.01)
    ids = np.char.add("Q", np.arange(5000).astype(str))
    write_predictions(tmp_path / "p.csv", Predictions(query=ids, reference=ids, score=scores))
    np.testing.assert_array_equal(read_predictions(tmp_path / "p.csv").score, scores)
    np.testing.assert_array_equal(_read_predictions_checked(tmp_path / "p.csv").score, scores)


@pytest.mark.parametrize("padding", ["", " ", '"'])
def test_every_reader_parses_odd_spellings_as_float_does(tmp_path, padding):
    # pandas' parsers round `+1E-30 ` (a sign, then a space) and some long mantissas 1 ulp off,
    # and read a column of integers as integers (-0 as 0); every reader must give float()'s value.
    # Unquoted files take the plain path, quoted ids pandas' pass.
    from harness.isc.io import _read_predictions_checked

    texts = ["+1E-30", "+20000000000000010E1", "-0", "0.500000000000000166533453693773481063"]
    quote = padding if padding == '"' else ""
    body = "".join(
        f"{quote}Q{i}{quote},R,{text}{padding if padding != quote else ''}\n"
        for i, text in enumerate(texts)
    )
    path = write(tmp_path / "p.csv", body)
    expected = np.array([float(text) for text in texts]).view(np.int64)
    for reader in (read_predictions, _read_predictions_checked):
        np.testing.assert_array_equal(reader(path).score.view(np.int64), expected)
    integers = write(tmp_path / "i.csv", "Q1,R,-0\nQ2,R,2\n")
    assert str(_read_predictions_checked(integers).score[0]) == "-0.0"


def test_predictions_without_header_and_with_blank_lines(tmp_path):
    p = read_predictions(write(tmp_path / "p.csv", "Q1,R1,0.5\n\nQ2,R2,-1e3\n"))
    assert p.score.tolist() == [0.5, -1000.0]


@pytest.mark.parametrize(
    "text, message",
    [
        # malformed lines
        ("query_id,reference_id,score\nQ1,R1,0.5\nQ2,R2,0.5,9\n", r"p.csv:3: 4 fields, expected 3"),
        ("Q1,R1,0.5\nQ2,R2\n", r"p.csv:2: no score \(expected query_id,reference_id,score\)"),
        ("Q1,,0.5\n", r"p.csv:1: empty reference_id"),
        # unknown columns
        ("query,db,similarity\nQ1,R1,0.5\n", r"p.csv:1: unknown columns"),
        # non-numeric or NaN scores (line numbers count the header and blank lines)
        ("query_id,reference_id,score\nQ1,R1,0.5\n\nQ2,R2,high\n", r"p.csv:4: score 'high'"),
        ("Q1,R1,nan\n", r"p.csv:1: score 'nan' is not a finite number"),
        ("Q1,R1,inf\n", r"p.csv:1: score 'inf'"),
        # duplicate pairs
        (
            "Q1,R1,0.5\nQ2,R1,0.4\nQ1,R1,0.3\n",
            r"p.csv:3: duplicate prediction Q1,R1 \(first on line 1\)",
        ),
        # empty file, header only
        ("", r"p.csv: the file is empty"),
        ("query_id,reference_id,score\n", r"p.csv: no predictions"),
    ],
)
def test_bad_predictions(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_predictions(write(tmp_path / "p.csv", text))


def test_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_predictions(tmp_path / "absent.csv")


# ---------------------------------------------------------------------------------------------
# Descriptors
# ---------------------------------------------------------------------------------------------


def descriptors(ids, d=8, seed=0):
    rng = np.random.default_rng(seed)
    return Descriptors(ids=ids, features=rng.standard_normal((len(ids), d)).astype(np.float32))


def test_descriptors_official_layout_sorted_by_id(tmp_path):
    query = descriptors(["Q2", "Q0", "Q1"])
    reference = descriptors(["R1", "R0"], seed=1)
    write_descriptors(tmp_path / "d.h5", query=query, reference=reference)
    with h5py.File(tmp_path / "d.h5") as handle:
        assert sorted(handle) == ["query", "query_ids", "reference", "reference_ids"]
        assert handle["query"].dtype == np.float32
        assert handle["query_ids"][()].tolist() == [b"Q0", b"Q1", b"Q2"]
    again = read_descriptors(tmp_path / "d.h5", "query")
    assert again.ids.tolist() == ["Q0", "Q1", "Q2"]
    np.testing.assert_array_equal(again.features, query.features[[1, 2, 0]])


def test_only_split_is_read_without_naming_it(tmp_path):
    write_descriptors(tmp_path / "t.h5", training=descriptors(["T1", "T0"]))
    assert read_descriptors(tmp_path / "t.h5").ids.tolist() == ["T0", "T1"]
    write_descriptors(tmp_path / "two.h5", query=descriptors(["Q0"]), reference=descriptors(["R0"]))
    with pytest.raises(InputError, match="exactly one descriptor split"):
        read_descriptors(tmp_path / "two.h5")


def raw_h5(path, split="query", features=None, ids=None):
    features = np.zeros((2, 4), np.float32) if features is None else features
    ids = np.array([b"Q0", b"Q1"]) if ids is None else ids
    with h5py.File(path, "w") as handle:
        handle[split] = features
        handle[f"{split}_ids"] = ids
    return path


def test_nan_and_inf_descriptors(tmp_path):
    features = np.zeros((3, 4), np.float32)
    features[2, 1] = np.nan
    path = raw_h5(tmp_path / "d.h5", features=features, ids=np.array([b"Q0", b"Q1", b"Q2"]))
    with pytest.raises(
        InputError, match=r"d.h5: dataset 'query': row 2 \(id Q2\) holds NaN or inf"
    ):
        read_descriptors(path)
    features[2, 1] = np.inf
    path = raw_h5(tmp_path / "e.h5", features=features, ids=np.array([b"Q0", b"Q1", b"Q2"]))
    with pytest.raises(InputError, match="NaN or inf"):
        read_descriptors(path)


def test_dimension_limit_and_max_dim(tmp_path):
    path = raw_h5(tmp_path / "d.h5", features=np.zeros((2, 257), np.float32))
    with pytest.raises(InputError, match="dimension 257 exceeds 256"):
        read_descriptors(path)
    assert read_descriptors(path, max_dim=512).dim == 257


def test_ids_must_be_strings(tmp_path):
    path = raw_h5(tmp_path / "d.h5", ids=np.array([0, 1]))
    with pytest.raises(InputError, match="query_ids has dtype int64; ids must be strings"):
        read_descriptors(path)


@pytest.mark.parametrize(
    "features, ids, message",
    [
        (np.zeros((3, 4), np.float32), np.array([b"Q0", b"Q1"]), "3 rows but 2 ids"),
        (np.zeros((2, 4), np.float32), np.array([b"Q0", b"Q0"]), "duplicate id 'Q0'"),
        (np.zeros((2, 4), np.int32), None, "expected float32"),
        (np.zeros(4, np.float32), None, "2-D"),
    ],
)
def test_other_bad_descriptor_files(tmp_path, features, ids, message):
    with pytest.raises(InputError, match=message):
        read_descriptors(raw_h5(tmp_path / "d.h5", features=features, ids=ids))


def test_variable_length_string_ids_are_accepted(tmp_path):
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as handle:
        handle["reference"] = np.ones((2, 3), np.float32)
        handle.create_dataset("reference_ids", data=["R0", "R1"], dtype=h5py.string_dtype())
    assert read_descriptors(path, "reference").ids.tolist() == ["R0", "R1"]


def test_not_an_hdf5_file(tmp_path):
    with pytest.raises(InputError, match="not a readable HDF5 file"):
        read_descriptors(write(tmp_path / "d.h5", "hello"))


def test_mismatched_dimensions_in_search():
    with pytest.raises(InputError, match="dimensions differ: queries have 8, references 4"):
        search(descriptors(["Q0"], d=8), descriptors(["R0"], d=4))


def test_ground_truth_type_is_plain_arrays():
    gt = GroundTruth(queries=["Q1"], query=["Q1"], reference=["R1"])
    assert gt.query.dtype.kind == "U" and gt.n_gt == 1


# ---------------------------------------------------------------------------------------------
# One rule for ids in every file: surrounding whitespace is not part of the id
# ---------------------------------------------------------------------------------------------

SPACED = ["Q1 ", " Q1", "\tQ1\t", '" Q1 "', "Q1\u00a0", "\u3000Q1"]


@pytest.mark.parametrize("spelling", SPACED)
def test_ground_truth_ids_are_stripped_on_both_sides(tmp_path, spelling):
    reference = spelling.replace("Q1", "R1")
    gt = read_ground_truth(write(tmp_path / "gt.csv", f"Q0,R0\n{spelling},{reference}\nQ2,\n"))
    assert gt.query.tolist() == ["Q0", "Q1"] and gt.reference.tolist() == ["R0", "R1"]
    assert gt.queries.tolist() == ["Q0", "Q1", "Q2"]


@pytest.mark.parametrize("spelling", SPACED)
def test_prediction_ids_and_scores_are_stripped(tmp_path, spelling):
    reference = spelling.replace("Q1", "R1")
    text = f"query_id,reference_id,score\nQ0,R0,0.25\n{spelling},{reference}, 0.5 \n"
    predictions = read_predictions(write(tmp_path / "p.csv", text))
    assert predictions.query.tolist() == ["Q0", "Q1"]
    assert predictions.reference.tolist() == ["R0", "R1"]
    assert predictions.score.tolist() == [0.25, 0.5]


def test_descriptor_ids_are_stripped(tmp_path):
    path = raw_h5(tmp_path / "d.h5", ids=np.array([b" Q0", "Q1\u3000".encode()]))
    assert read_descriptors(path).ids.tolist() == ["Q0", "Q1"]


def test_ids_equal_but_for_whitespace_are_duplicates(tmp_path):
    with pytest.raises(InputError, match=r"gt.csv:2: duplicate ground-truth row Q1,R1"):
        read_ground_truth(write(tmp_path / "gt.csv", "Q1,R1\nQ1 ,R1\n"))
    with pytest.raises(InputError, match=r"p.csv:2: duplicate prediction Q1,R1"):
        read_predictions(write(tmp_path / "p.csv", "Q1,R1,0.5\n Q1,R1 ,0.4\n"))
    path = raw_h5(tmp_path / "d.h5", ids=np.array([b"Q0", b"Q0 "]))
    with pytest.raises(InputError, match="duplicate id 'Q0'"):
        read_descriptors(path)


@pytest.mark.parametrize(
    "reader, text, message",
    [
        (read_ground_truth, "Q1,R1\nQ\x002,R2\n", r"gt.csv:2: query_id 'Q\\x002' holds a control"),
        (read_ground_truth, "Q1,R1\nQ2,R\x1b2\n", r"gt.csv:2: reference_id 'R\\x1b2' holds"),
        (read_predictions, "Q1,R\x072,0.5\n", r"p.csv:1: reference_id 'R\\x072' holds a control"),
        # A tab before a quote makes CSV read the quotes as part of the value.
        (
            read_predictions,
            'Q1,\t"R2",0.5\n',
            r"p.csv:1: reference_id '\"R2\"' holds a double quote",
        ),
    ],
)
def test_ids_with_forbidden_characters_are_refused(tmp_path, reader, text, message):
    name = "gt.csv" if reader is read_ground_truth else "p.csv"
    with pytest.raises(InputError, match=message):
        reader(write(tmp_path / name, text))


# ---------------------------------------------------------------------------------------------
# The first line: the header (any case), a data row like the others, or an error
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first", ["qid,rid", "query,reference", "Query ID,Reference ID", "q,r", "QUERY_ID,DB_ID"]
)
def test_a_ground_truth_header_with_other_names_is_refused_not_read_as_a_pair(tmp_path, first):
    path = write(tmp_path / "gt.csv", f"{first}\nQ00001,R000001\nQ00002,\n")
    with pytest.raises(InputError, match=r"gt.csv:1: unknown columns .*not an id pair"):
        read_ground_truth(path)


@pytest.mark.parametrize(
    "text, pairs",
    [
        ("QUERY_ID,Reference_Id\nQ1,R1\n", [("Q1", "R1")]),
        (" query_id , reference_id \nQ1,R1\n", [("Q1", "R1")]),
        ("\ufeffquery_id,reference_id\r\nQ1,R1\r\n", [("Q1", "R1")]),
        ("\n\nQ7,R7\nQ8,R8\n", [("Q7", "R7"), ("Q8", "R8")]),
        # Ids of any form, as long as the first line has the form of the lines below it
        ("img_a,ref_a\nimg_b,ref_b\n", [("img_a", "ref_a"), ("img_b", "ref_b")]),
        ("cat,dog\nbird,fish\n", [("cat", "dog"), ("bird", "fish")]),
        ("クエリ1,参照1\nクエリ2,参照2\n", [("クエリ1", "参照1"), ("クエリ2", "参照2")]),
        # A distractor first, even without its trailing comma
        ("Q3,\nQ1,R1\n", [("Q1", "R1")]),
        ("Q3\nQ1,R1\n", [("Q1", "R1")]),
        ("Q1,R1\n", [("Q1", "R1")]),
    ],
)
def test_first_lines_that_are_headers_or_data(tmp_path, text, pairs):
    gt = read_ground_truth(write(tmp_path / "gt.csv", text))
    assert list(zip(gt.query.tolist(), gt.reference.tolist(), strict=True)) == pairs


def test_a_one_line_ground_truth_without_digits_is_refused(tmp_path):
    with pytest.raises(InputError, match=r"gt.csv:1: unknown columns 'qid,rid'"):
        read_ground_truth(write(tmp_path / "gt.csv", "qid,rid\n"))


@pytest.mark.parametrize(
    "text",
    [
        "QUERY_ID,Reference_ID,Score\nQ1,R1,0.5\n",
        '"query_id","reference_id","score"\nQ1,R1,0.5\n',
        "\ufeffquery_id,reference_id,score\nQ1,R1,0.5\n",
    ],
)
def test_prediction_header_variants(tmp_path, text):
    predictions = read_predictions(write(tmp_path / "p.csv", text))
    assert predictions.query.tolist() == ["Q1"] and predictions.score.tolist() == [0.5]


def test_a_short_first_line_is_padded_not_miscounted(tmp_path):
    with pytest.raises(InputError, match=r"p.csv:1: no score"):
        read_predictions(write(tmp_path / "p.csv", "Q1,R1\nQ2,R2,0.5\n"))
    with pytest.raises(InputError, match=r"gt.csv:3: 3 fields, expected 2"):
        read_ground_truth(write(tmp_path / "gt.csv", "Q1\nQ2,R2\nQ3,R3,x\n"))


# ---------------------------------------------------------------------------------------------
# Paths that are not readable files, for every reader
# ---------------------------------------------------------------------------------------------

READERS = [read_ground_truth, read_predictions, read_descriptors]


@pytest.mark.parametrize("reader", READERS)
def test_a_directory_is_named_as_such(tmp_path, reader):
    (tmp_path / "d").mkdir()
    with pytest.raises(InputError, match=r"d: is a directory, expected a file"):
        reader(tmp_path / "d")


@pytest.mark.parametrize("reader", READERS)
def test_a_fifo_is_refused_without_blocking(tmp_path, reader):
    import os

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match=r"pipe: is a FIFO \(named pipe\), not a regular file"):
        reader(tmp_path / "pipe")


@pytest.mark.parametrize("reader", READERS)
def test_an_unreadable_file_is_an_input_error(tmp_path, monkeypatch, reader):
    import builtins

    path = write(tmp_path / "locked", "Q1,R1,0.5\n")
    real_open = builtins.open

    def open_as_another_user(file, *args, **kwargs):
        if str(file) == str(path):
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    # Tests run as root, which chmod cannot lock out; the reader must meet the error that a
    # normal user meets.
    monkeypatch.setattr(builtins, "open", open_as_another_user)
    with pytest.raises(InputError, match=r"locked: cannot be read \(Permission denied\)"):
        reader(path)


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root reads any file")
@pytest.mark.parametrize("reader", READERS)
def test_a_file_without_read_permission_is_an_input_error(tmp_path, reader):
    path = write(tmp_path / "locked", "Q1,R1,0.5\n")
    path.chmod(0)
    with pytest.raises(InputError, match=r"locked: cannot be read \(Permission denied\)"):
        reader(path)


# ---------------------------------------------------------------------------------------------
# Descriptor files that cannot be scored
# ---------------------------------------------------------------------------------------------


def test_descriptors_of_dimension_zero_or_without_rows(tmp_path):
    path = raw_h5(tmp_path / "d.h5", features=np.zeros((2, 0), np.float32))
    with pytest.raises(InputError, match=r"d.h5: dataset 'query': dimension 0"):
        read_descriptors(path)
    path = raw_h5(tmp_path / "e.h5", features=np.zeros((0, 4), np.float32), ids=np.zeros(0, "S2"))
    with pytest.raises(InputError, match=r"e.h5: dataset 'query': no descriptors \(0 rows\)"):
        read_descriptors(path)


def test_descriptor_ids_that_are_not_utf8_or_not_a_dataset(tmp_path):
    path = raw_h5(tmp_path / "c.h5", ids=np.array([b"Q0", b"Q\x001"]))
    with pytest.raises(InputError, match=r"query_ids: row 1: 'Q\\x001' holds a control"):
        read_descriptors(path)
    path = raw_h5(tmp_path / "d.h5", ids=np.array([b"Q0", b"Q\xff"]))
    with pytest.raises(InputError, match=r"query_ids: the id of row 1 \(b'Q\\xff'\) is not UTF-8"):
        read_descriptors(path)
    with h5py.File(tmp_path / "g.h5", "w") as handle:
        handle["query"] = np.zeros((2, 4), np.float32)
        handle.create_group("query_ids")
    with pytest.raises(InputError, match="query_ids must be a dataset of strings"):
        read_descriptors(tmp_path / "g.h5")


def test_float64_descriptors_beyond_float32_are_refused(tmp_path):
    features = np.zeros((2, 4), np.float64)
    features[1, 0] = 1e300
    with pytest.raises(InputError, match=r"row 1 \(id Q1\) holds NaN or inf"):
        read_descriptors(raw_h5(tmp_path / "d.h5", features=features))


def test_a_fourth_column_is_an_error_not_a_shifted_read(tmp_path):
    # pandas would take the first field as an index and read R1 as the query, 0.5 as the reference
    with pytest.raises(InputError, match=r"p.csv:1: 4 fields, expected 3"):
        read_predictions(write(tmp_path / "p.csv", "Q1,R1,0.5,0.7\nQ2,R2,0.4,0.1\n"))
    text = "query_id,reference_id,score\nQ1,R1,0.5\nQ2,R2,0.4,rank2\n"
    with pytest.raises(InputError, match=r"p.csv:3: 4 fields, expected 3"):
        read_predictions(write(tmp_path / "p.csv", text))


@pytest.mark.parametrize(
    "text, queries, n_gt",
    [
        ("Q1,R1,\nQ2,R2\n", ["Q1", "Q2"], 2),
        ("Q1,R1\nQ2,R2,\n", ["Q1", "Q2"], 2),
        ("Q1,R1\nQ2,R2,,\nQ3,,\n", ["Q1", "Q2", "Q3"], 2),
        ("Q1,R1, ,\t\n", ["Q1"], 1),
    ],
)
def test_empty_fields_beyond_the_columns_are_tolerated_anywhere(tmp_path, text, queries, n_gt):
    gt = read_ground_truth(write(tmp_path / "gt.csv", text))
    assert gt.queries.tolist() == queries and gt.n_gt == n_gt


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path):
    path = tmp_path / "gt.csv"
    path.write_bytes("Q1,R1\nQ2,R\u00e92\n".encode("latin-1"))
    with pytest.raises(
        InputError, match=r"gt.csv:2: not a UTF-8 text file \(byte 0xe9: invalid continuation"
    ):
        read_ground_truth(path)
    path.write_bytes("Q1,R1,0.5\n".encode("utf-16"))
    with pytest.raises(InputError, match=r"gt.csv:1: not a UTF-8 text file \(byte 0xff"):
        read_predictions(path)
