"""Issue 14, point 2: golden records are found wherever ``crosscheck --replay`` runs.

``find_record`` tries the argument as a path (relative to the current directory), then
its file name in the installed package data (flashbits/records/, pyproject.toml's
package-data) and the checkout's tests/data/hw/; when nothing matches, the message lists
every place it looked.
"""

from __future__ import annotations

import os

import pytest

from flashbits.crosscheck import record as rec
from flashbits.crosscheck.cli import crosscheck_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HW = os.path.join(ROOT, "tests", "data", "hw")


@pytest.mark.parametrize("arg", ["attention_golden", "attention_golden.npz",
                                 "tests/data/hw/attention_golden.npz"])
def test_record_found_by_name_from_any_directory(arg, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(rec.find_record(arg), os.path.join(HW, "attention_golden.npz"))


def test_a_local_file_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "attention_golden.npz").write_bytes(b"mine")
    assert rec.find_record("attention_golden.npz") == "attention_golden.npz"


def test_missing_record_lists_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        rec.find_record("no_such_golden")
    msg = str(e.value)
    assert str(tmp_path / "no_such_golden") in msg
    assert os.path.join(HW, "no_such_golden.npz") in msg
    assert "attention_golden.npz" in msg  # what is shipped
    assert crosscheck_main(["--replay", "no_such_golden"]) == 2
    assert "looked in" in capsys.readouterr().err


def test_replay_by_name_from_a_temporary_directory(tmp_path, monkeypatch, capsys):
    """The CLI replays a record named without a path, from a directory that holds no
    records: one entry of the golden record, installed in a stand-in package-data folder."""
    entries, prov = rec.load_record(os.path.join(HW, "attention_golden.npz"))
    shipped = tmp_path / "site" / "records"
    shipped.mkdir(parents=True)
    rec.save_record(str(shipped / "tiny_golden.npz"), entries[:1], prov)
    monkeypatch.setattr(rec, "RECORD_DIRS", (str(shipped),) + rec.RECORD_DIRS)
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert crosscheck_main(["--replay", "tiny_golden"]) == 0
    out = capsys.readouterr().out
    assert "replayed 1 entries of " + str(shipped / "tiny_golden.npz") in out
    assert "replay: all bits equal" in out


def test_the_attention_records_are_package_data():
    """pyproject.toml installs tests/data/hw/attention*_golden.npz as flashbits/records/,
    the first folder find_record searches in an installed tree (a few MB each)."""
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        cfg = tomllib.load(f)["tool"]["setuptools"]
    assert "flashbits.records" in cfg["packages"]
    assert cfg["package-dir"]["flashbits.records"] == "tests/data/hw"
    globs = cfg["package-data"]["flashbits.records"]
    import fnmatch

    shipped = [f for f in os.listdir(HW) if any(fnmatch.fnmatch(f, g) for g in globs)]
    assert "attention_golden.npz" in shipped
    assert sum(os.path.getsize(os.path.join(HW, f)) for f in shipped) < 20 * 2**20
    installed = os.path.join(os.path.dirname(os.path.dirname(rec.__file__)), "records")
    assert installed == rec.RECORD_DIRS[0] or rec.RECORD_DIRS[0].endswith(os.sep + "records")
