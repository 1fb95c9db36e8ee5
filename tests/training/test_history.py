from embedlab.training.history import append_history, read_history, truncate_history


def test_history_appends_rows_under_one_header(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    append_history(path, {"epoch": 0, "map_at_r": 0.5})
    append_history(path, {"epoch": 1, "map_at_r": 0.6})
    assert read_history(path) == [{"epoch": "0", "map_at_r": "0.5"}, {"epoch": "1", "map_at_r": "0.6"}]


def test_truncate_drops_epochs_a_resumed_run_trains_again(tmp_path) -> None:
    path = tmp_path / "metrics.csv"
    for epoch in range(4):
        append_history(path, {"epoch": epoch, "map_at_r": epoch / 10})
    truncate_history(path, 2)
    assert [row["epoch"] for row in read_history(path)] == ["0", "1"]
    append_history(path, {"epoch": 2, "map_at_r": 0.9})
    assert [row["epoch"] for row in read_history(path)] == ["0", "1", "2"]
