"""An audit CSV read back for `--exclude-audit`: its held-out keys, or a clear error."""

import pytest

from embedlab.audit.tables import read_held_out


def test_the_held_out_rows_are_read_and_a_bad_file_is_named(tmp_path) -> None:
    good = tmp_path / "leaks.csv"
    good.write_text("group,path,held_out\n1,/a.png,false\n1,/b.png,true\n2,/c.png#0,0,4,4,true\n")
    with pytest.raises(ValueError, match=r"leaks.csv, row 4: held_out"):
        read_held_out(good)
    good.write_text('group,path,held_out\n1,/a.png,false\n1,/b.png,true\n2,"/c.png#0,0,4,4",TRUE\n')
    assert read_held_out(good) == {"/b.png", "/c.png#0,0,4,4"}
    other = tmp_path / "metrics.csv"
    other.write_text("epoch,map\n1,0.5\n")
    with pytest.raises(ValueError, match=r"metrics.csv lacks the column\(s\) path, held_out"):
        read_held_out(other)
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        read_held_out(tmp_path / "nope.csv")
