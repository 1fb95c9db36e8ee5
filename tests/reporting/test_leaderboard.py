import csv

import pytest

from embedlab.reporting.leaderboard import build_leaderboard, write_leaderboard


def _summary(p1: float, map_r: float, seconds: float = 10.0) -> dict:
    return {
        "metrics": {"precision_at_1": p1, "map_at_r": map_r},
        "train_seconds": seconds,
        "images_per_second": 100.0,
    }


def test_rows_average_over_seeds_and_sort_by_map_at_r(tmp_path) -> None:
    runs = [
        ("a", 0, _summary(0.9, 0.5)),
        ("a", 1, _summary(0.8, 0.7)),
        ("b", 0, _summary(0.7, 0.9)),
    ]
    rows = build_leaderboard(runs, ["precision_at_1", "map_at_r"])
    assert [r.combination for r in rows] == ["b", "a"]
    a = rows[1]
    assert a.mean("precision_at_1") == pytest.approx(0.85)
    assert a.std("map_at_r") == pytest.approx(0.1414213, rel=1e-5)  # sample standard deviation
    assert rows[0].std("map_at_r") == 0.0

    csv_path, md_path = write_leaderboard(rows, ["precision_at_1", "map_at_r"], tmp_path)
    with csv_path.open() as stream:
        table = list(csv.DictReader(stream))
    assert table[0]["combination"] == "b" and table[1]["seeds"] == "2"
    assert float(table[1]["map_at_r_mean"]) == pytest.approx(0.6)
    markdown = md_path.read_text()
    assert "| 2 | a | 2 | 0.8500 ± 0.0707 | 0.6000 ± 0.1414 |" in markdown
