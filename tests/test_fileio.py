"""fileio.atomic_write: the one way files are replaced."""

from __future__ import annotations

import threading

import pytest

from hopscotch_core.fileio import atomic_write


def test_text_bytes_and_writer_replace_the_file_and_leave_no_temporary(tmp_path):
    p = tmp_path / "a.json"
    atomic_write(p, "first")
    atomic_write(p, b"second")
    assert p.read_text() == "second"
    atomic_write(p, lambda tmp: open(tmp, "w").write("third"))
    assert p.read_text() == "third"
    assert [f.name for f in tmp_path.iterdir()] == ["a.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write(p, "kept")

    def broken(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(p, broken)
    assert p.read_text() == "kept" and [f.name for f in tmp_path.iterdir()] == ["a.txt"]


def test_concurrent_writers_never_share_a_temporary_file(tmp_path):
    p = tmp_path / "record.json"
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for _ in range(50):
                atomic_write(p, f"writer {i} " * 200)
        except BaseException as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = p.read_text()
    assert not errors
    assert len({w for w in text.split() if w.isdigit()}) == 1  # one writer's whole text, never a mix
    assert [f.name for f in tmp_path.iterdir()] == ["record.json"]


def test_files_get_the_normal_mode_not_the_temporary_files_private_one(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        p = tmp_path / "new.json"
        atomic_write(p, "x")
        assert p.stat().st_mode & 0o777 == 0o644  # as open(p, "w") under umask 022
        atomic_write(tmp_path / "w.bin", lambda tmp: open(tmp, "wb").write(b"y"))
        assert (tmp_path / "w.bin").stat().st_mode & 0o777 == 0o644
        os.chmod(p, 0o600)  # a file the owner made private stays private when replaced
        atomic_write(p, "z")
        assert p.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
