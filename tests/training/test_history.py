import pytest

from embedlab.training.history import (
    append_history,
    read_history,
    training_rows,
    truncate_history,
    zero_shot_row,
)


def _row(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "stage": "zero_shot" if epoch == 0 else "train", "map_at_r": value}


def test_history_appends_rows_under_one_header(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    append_history(path, _row(1, 0.5))
    append_history(path, _row(2, 0.6))
    assert read_history(path) == [
        {"epoch": "1", "stage": "train", "map_at_r": "0.5"},
        {"epoch": "2", "stage": "train", "map_at_r": "0.6"},
    ]


def test_rows_follow_the_files_column_order_and_other_columns_are_refused(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    append_history(path, _row(0, 0.5))
    append_history(path, {"map_at_r": 0.6, "stage": "train", "epoch": 1})
    assert read_history(path)[1] == {"epoch": "1", "stage": "train", "map_at_r": "0.6"}
    with pytest.raises(ValueError, match="has the columns"):
        append_history(path, {**_row(2, 0.7), "loss/scale": 3.0})


def test_truncate_keeps_the_zero_shot_row_and_the_epochs_trained(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    for epoch in range(5):
        append_history(path, _row(epoch, epoch / 10))
    truncate_history(path, 2)  # resumed after 2 epochs: 3 and 4 are trained again
    assert [row["epoch"] for row in read_history(path)] == ["0", "1", "2"]
    append_history(path, _row(3, 0.9))
    rows = read_history(path)
    assert [row["epoch"] for row in rows] == ["0", "1", "2", "3"]
    assert zero_shot_row(rows) == {"epoch": "0", "stage": "zero_shot", "map_at_r": "0.0"}
    assert [row["epoch"] for row in training_rows(rows)] == ["1", "2", "3"]


def test_a_history_written_before_the_zero_shot_row_reads_and_resumes_as_todays(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,map_at_r\n0,6,0.5\n1,12,0.6\n2,18,0.7\n")  # epochs from 0, no stage
    assert read_history(path) == [
        {"epoch": "1", "stage": "train", "step": "6", "map_at_r": "0.5"},
        {"epoch": "2", "stage": "train", "step": "12", "map_at_r": "0.6"},
        {"epoch": "3", "stage": "train", "step": "18", "map_at_r": "0.7"},
    ]
    assert zero_shot_row(read_history(path)) is None
    truncate_history(path, 3)  # nothing to drop, but the file takes today's columns
    assert path.read_text().splitlines()[0] == "epoch,stage,step,map_at_r"
    append_history(path, {"epoch": 4, "stage": "train", "step": 24, "map_at_r": 0.8})
    assert [row["epoch"] for row in read_history(path)] == ["1", "2", "3", "4"]
