"""Datasets as users bring them: JSONL, Parquet, saved `datasets` directories, each row located
(`file:line` or `file: row N`) and every unreadable input reported in one line saying where."""

from __future__ import annotations

import sys

import pytest

from asyncrl.learner.data import DataError, load_rows, read_rows

ROWS = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"}]


def test_jsonl_rows_carry_their_line_numbers(tmp_path):
    f = tmp_path / "train.jsonl"
    # Blank lines are skipped but counted: the second row is on line 3.
    f.write_text('{"prompt": "1+1=", "answer": "2"}\n\n{"prompt": "2+2=", "answer": "4"}\n')
    rows, where = read_rows(str(f))
    assert rows == ROWS
    assert where == [f"{f}:1", f"{f}:3"]
    assert load_rows(str(f)) == ROWS


@pytest.mark.parametrize(
    "text, message",
    [
        # Line 2 is cut short: json fails past its newline; the file's line is still 2.
        (
            '{"a": 1}\n{"a": \n',
            ":2: invalid JSON: Expecting value at the end of the line",
        ),
        ('{"a": 1}\n\n{"a" 2}\n', ":3: invalid JSON: Expecting ':' delimiter at column 6"),
        ('[{"a": 1},\n', ":1: invalid JSON: Expecting value at the end of the line (a JSON array?"),
        ('{"a": 1}\n[1, 2]\n', ":2: each line must be a JSON object, got list"),
        ("\n\n", ": no rows"),
    ],
)
def test_jsonl_errors_say_file_and_line(tmp_path, text, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(text)
    with pytest.raises(DataError) as info:
        read_rows(str(f))
    assert str(info.value).startswith(f"{f}{message}"), str(info.value)


def test_bad_bytes_are_reported_on_their_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_bytes(b'{"a": 1}\n{"a": "\xff"}\n')  # 0xff starts no UTF-8 sequence; byte 7
    with pytest.raises(DataError, match=r":2: not UTF-8 text \(invalid start byte at byte 7\)"):
        read_rows(str(f))


def test_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), f)
    rows, where = read_rows(str(f))
    assert rows == ROWS and where == [f"{f}: row 1", f"{f}: row 2"]
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        read_rows(str(tmp_path / "bad.parquet"))


def test_saved_datasets_directory(tmp_path):
    import datasets

    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "ds"))
    rows, where = read_rows(str(tmp_path / "ds"))
    assert rows == ROWS and where[1] == f"{tmp_path / 'ds'}: row 2"
    datasets.DatasetDict(train=datasets.Dataset.from_list(ROWS)).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd: a dataset with splits \(train\); name one"):
        read_rows(str(tmp_path / "dd"))
    assert read_rows(str(tmp_path / "dd" / "train"))[0] == ROWS
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not one saved by datasets' save_to_disk"):
        read_rows(str(tmp_path / "plain"))


@pytest.mark.parametrize("module, name", [("pyarrow", "x.parquet"), ("datasets", "dir")])
def test_a_missing_library_names_the_extra(tmp_path, monkeypatch, module, name):
    path = tmp_path / name
    path.mkdir() if name == "dir" else path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    with pytest.raises(
        DataError, match=rf"needs the {module} package: pip install 'asyncrl\[data\]'"
    ):
        read_rows(str(path))


def test_a_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file or directory"):
        read_rows(str(tmp_path / "nope.jsonl"))
