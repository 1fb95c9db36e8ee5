import pytest

from embedlab.data.sources import read_csv, read_folder


def test_folder_gives_one_label_per_subfolder(image_folder) -> None:
    source = read_folder(image_folder, image_size=8, channels=3)
    assert len(source.images) == 20
    assert source.images.class_names == ["id_0", "id_1", "id_2", "id_3"]
    assert source.images.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5


def test_empty_or_missing_folder_is_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_folder(tmp_path / "nope", 8, 3)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_folder(tmp_path / "empty", 8, 3)


def test_csv_reads_split_groups_and_extra_columns(image_csv) -> None:
    source = read_csv(image_csv, image_size=8, channels=3)
    assert len(source.images) == 20
    assert source.split is not None and source.split.count("validation") == 10
    assert source.images.groups is not None and source.images.groups.tolist()[:4] == [0, 0, 1, 1]
    assert source.images.extra is not None and source.images.extra[0] == {"camera": "left"}
    assert source.images.paths[0].is_file()


def test_csv_missing_column_names_file_and_column(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("file,label\na.png,1\n")
    with pytest.raises(ValueError, match=r"bad.csv lacks the column\(s\) path; it has: file, label"):
        read_csv(path, 8, 3)


def test_csv_bad_split_value_names_the_row(tmp_path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("path,label,split\na.png,1,train\nb.png,2,holdout\n")
    with pytest.raises(ValueError, match="row 3: split must be one of"):
        read_csv(path, 8, 3)


def test_csv_empty_labels_are_refused_with_their_rows(tmp_path) -> None:
    path = tmp_path / "labels.csv"
    rows = ["a.png,whale_1", "b.png,", "c.png,  ", "d.png,whale_2", "e.png"]
    path.write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(ValueError, match=r"labels.csv: the 'label' column is empty in row\(s\) 3, 4, 6"):
        read_csv(path, 8, 3)


def test_csv_empty_paths_are_refused_and_long_lists_are_cut(tmp_path) -> None:
    path = tmp_path / "paths.csv"
    path.write_text("path,label\n" + "".join(f",id_{n}\n" for n in range(40)))
    with pytest.raises(
        ValueError, match=r"'path' column is empty in row\(s\) 2, 3, .*, 11, \.\.\. \(40 rows\)"
    ):
        read_csv(path, 8, 3)
