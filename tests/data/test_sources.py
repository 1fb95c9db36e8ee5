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


def test_csv_bounding_boxes_are_read_per_row(tmp_path) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text("path,label,x_1,y_1,x_2,y_2\na.png,1,0,0,10,8\nb.png,2,,,,\nc.png,2,1.0,2.0,5.6,9\n")
    images = read_csv(path, 8, 3).images
    assert images.boxes == [(0, 0, 10, 8), None, (1, 2, 6, 9)]
    assert images.extra is not None and images.extra[0]["x_2"] == "10"


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("path,label,x_1,y_1,x_2", "a.png,1,0,0,3", "lacks y_2; give all of x_1, y_1, x_2, y_2"),
        ("path,label,x_1,y_1,x_2,y_2", "a.png,1,0,0,wide,3", r"row 2: the box .* must be four numbers"),
        ("path,label,x_1,y_1,x_2,y_2", "a.png,1,5,0,5,3", r"row 2: the box needs x_1 < x_2 and y_1 < y_2"),
    ],
)
def test_csv_bad_bounding_boxes_name_the_row_or_the_column(tmp_path, header, row, message) -> None:
    path = tmp_path / "boxes.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(ValueError, match=message):
        read_csv(path, 8, 3)
