import pytest

from embedlab.atomic import atomic_write, atomic_write_text, remove_stale_temporaries


def test_text_is_replaced_whole(tmp_path) -> None:
    path = tmp_path / "a.txt"
    atomic_write_text(path, "first")
    atomic_write_text(path, "second")
    assert path.read_text() == "second"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path) -> None:
    path = tmp_path / "a.bin"
    atomic_write(path, lambda stream: stream.write(b"good"))

    def fail(stream) -> None:
        stream.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        atomic_write(path, fail)
    assert path.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["a.bin"]


def test_stale_temporaries_of_killed_writers_are_removed_and_nothing_else(tmp_path) -> None:
    atomic_write_text(tmp_path / "last.ckpt", "good")
    (tmp_path / ".last.ckpt.x1y2.tmp").write_text("torn")
    (tmp_path / ".hidden").write_text("not ours")
    removed = remove_stale_temporaries(tmp_path)
    assert [p.name for p in removed] == [".last.ckpt.x1y2.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "last.ckpt"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_files_get_the_mode_of_a_plain_open_not_the_temporary_files(tmp_path, umask) -> None:
    import os
    import stat

    before = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "report.html", "<html></html>")
        atomic_write(tmp_path / "model.bin", lambda stream: stream.write(b"weights"))
    finally:
        os.umask(before)
    for name in ("report.html", "model.bin"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~umask, name
