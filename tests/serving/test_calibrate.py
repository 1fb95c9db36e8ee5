"""The open-set threshold: each function against a plain loop, then calibration of a real index."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedlab.index.store import load_index
from embedlab.serving.calibrate import (
    OpenSetScores,
    calibrate_index,
    open_set_scores,
    operating_point,
    threshold_for_best_f1,
    threshold_for_fmr,
)


def plain_open_set_scores(queries, query_labels, gallery, gallery_labels, hidden) -> OpenSetScores:
    """One query at a time; hidden[i] is the set of gallery indices query i must not see."""
    mated, correct, non_mated = [], [], []
    for i, query in enumerate(queries):
        sims = {j: float(query @ row) for j, row in enumerate(gallery) if j not in hidden[i]}
        same = [j for j in sims if gallery_labels[j] == query_labels[i]]
        others = [sims[j] for j in sims if gallery_labels[j] != query_labels[i]]
        if same:
            best = max(sims.values())
            top = min(j for j in sims if sims[j] == best)  # the tie rule: lowest index first
            mated.append(best)
            correct.append(gallery_labels[top] == query_labels[i])
        non_mated.append(max(others) if others else -math.inf)
    return OpenSetScores(
        np.array(mated, np.float32), np.array(correct, bool), np.array(non_mated, np.float32)
    )


def unit(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)
    # rounded so that some similarities tie
    rows = np.round(rows, 1)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def assert_scores_equal(got: OpenSetScores, expected: OpenSetScores) -> None:
    np.testing.assert_allclose(got.mated_scores, expected.mated_scores, atol=1e-6)
    np.testing.assert_array_equal(got.mated_correct, expected.mated_correct)
    np.testing.assert_allclose(got.non_mated_scores, expected.non_mated_scores, atol=1e-6)


def test_scores_against_a_separate_gallery_with_an_absent_identity() -> None:
    queries, gallery = unit(30, 0), unit(25, 1)
    query_labels = np.random.default_rng(2).integers(0, 6, 30)  # label 5 never in the gallery
    gallery_labels = np.random.default_rng(3).integers(0, 5, 25)
    exclude = np.where(np.arange(30) % 4 == 0, np.arange(30) % 25, -1)
    got = open_set_scores(queries, query_labels, gallery, gallery_labels, exclude_index=exclude)
    hidden = [{int(e)} if e >= 0 else set() for e in exclude]
    assert_scores_equal(got, plain_open_set_scores(queries, query_labels, gallery, gallery_labels, hidden))
    assert len(got.non_mated_scores) == 30 and len(got.mated_scores) < 30


def test_scores_of_a_set_searched_in_itself_with_groups() -> None:
    embeddings = unit(24, 4)
    labels = np.arange(24) % 5
    groups = np.arange(24) // 3
    got = open_set_scores(
        embeddings, labels, embeddings, labels, exclude_self=True, query_groups=groups, gallery_groups=groups
    )
    hidden = [{j for j in range(24) if j == i or groups[j] == groups[i]} for i in range(24)]
    assert_scores_equal(got, plain_open_set_scores(embeddings, labels, embeddings, labels, hidden))


def plain_rates(scores: OpenSetScores, t: float) -> tuple[float, float, float]:
    """(FMR, TMR, F1) by counting search by search."""
    false_matches = sum(1 for s in scores.non_mated_scores if s >= t)
    true_matches = sum(
        1 for s, c in zip(scores.mated_scores, scores.mated_correct, strict=True) if s >= t and c
    )
    accepted = sum(1 for s in scores.mated_scores if s >= t)
    missed = len(scores.mated_scores) - accepted
    f1 = 2 * accepted / (2 * accepted + false_matches + missed)
    return false_matches / len(scores.non_mated_scores), true_matches / len(scores.mated_scores), f1


def random_scores(seed: int) -> OpenSetScores:
    rng = np.random.default_rng(seed)
    return OpenSetScores(
        np.round(rng.uniform(0.4, 1.0, 40), 2).astype(np.float32),
        rng.random(40) < 0.8,
        np.round(rng.uniform(0.0, 0.8, 55), 2).astype(np.float32),
    )


def test_operating_point_counts_like_a_loop() -> None:
    scores = random_scores(0)
    for t in (0.3, 0.55, 0.7, 0.95):
        point = operating_point(scores, t)
        fmr, tmr, f1 = plain_rates(scores, t)
        assert (point.false_match_rate, point.true_match_rate) == pytest.approx((fmr, tmr))
        assert point.f1 == pytest.approx(f1) and (point.n_mated, point.n_non_mated) == (40, 55)


@pytest.mark.parametrize("target", [0.0, 0.01, 0.05, 0.1, 0.29, 0.5])
def test_fmr_threshold_is_the_smallest_meeting_the_target(target: float) -> None:
    scores = random_scores(1)
    candidates = sorted(
        {float(np.nextafter(s, np.float32(np.inf))) for s in scores.non_mated_scores}
        | {float(s) for s in scores.non_mated_scores}
    )
    expected = min(t for t in candidates if plain_rates(scores, t)[0] <= target)
    assert threshold_for_fmr(scores.non_mated_scores, target) == expected


def test_fmr_threshold_rejects_a_whole_run_of_tied_scores() -> None:
    # 10 non-mated scores, four tied at 0.9: a 0.1 target allows one false match, so all four go
    non_mated = np.array([0.9, 0.9, 0.9, 0.9, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0], np.float32)
    threshold = threshold_for_fmr(non_mated, 0.1)
    assert 0.9 < threshold < 0.9 + 1e-6
    assert (
        operating_point(
            OpenSetScores(np.ones(1, np.float32), np.ones(1, bool), non_mated), threshold
        ).false_match_rate
        == 0
    )


def test_best_f1_threshold_is_the_middle_of_the_best_interval() -> None:
    for seed in range(5):
        scores = random_scores(seed)
        values = sorted(
            {float(v) for v in np.concatenate([scores.mated_scores, scores.non_mated_scores])}, reverse=True
        )
        f1 = [plain_rates(scores, v)[2] for v in values]
        best = f1.index(max(f1))  # the first in descending order: the highest threshold
        expected = values[best] if best + 1 == len(values) else (values[best] + values[best + 1]) / 2
        got = threshold_for_best_f1(scores)
        assert got == pytest.approx(expected, abs=1e-7)
        assert plain_rates(scores, got)[2] == pytest.approx(max(f1))


def test_fmr_target_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        threshold_for_fmr(np.zeros(3, np.float32), 1.0)


@pytest.fixture
def index_copy(deployment, tmp_path: Path) -> Path:
    return Path(shutil.copytree(deployment.index_dir, tmp_path / "index"))


def test_calibrating_on_the_runs_validation_split_stores_the_operating_point(index_copy: Path) -> None:
    point = calibrate_index(index_copy, target_fmr=0.1, progress=False)
    record = load_index(index_copy).manifest.open_set
    assert record is not None and record.objective == "target_fmr" and record.target_fmr == 0.1
    assert record.threshold == point.threshold and record.true_match_rate == point.true_match_rate
    assert point.false_match_rate <= 0.1
    # two held-out identities of six images each, every image searched against the other eleven
    assert (point.n_mated, point.n_non_mated) == (12, 12)
    assert "validation split" in record.calibration_data


def test_calibrating_on_known_and_new_identities_against_the_gallery(deployment) -> None:
    record = load_index(deployment.index_dir).manifest.open_set
    assert record is not None and record.objective == "best_f1" and record.target_fmr is None
    # 12 images of gallery identities (mated and non-mated searches), 4 of new ones (non-mated only)
    assert (record.n_mated, record.n_non_mated) == (12, 16)
    assert str(deployment.calibration.resolve()) in record.calibration_data


def test_calibration_without_known_identities_is_a_clear_error(deployment, index_copy: Path) -> None:
    with pytest.raises(ValueError, match="no mated searches"):
        calibrate_index(index_copy, queries=[deployment.new_identities], progress=False)
    assert load_index(index_copy).manifest.open_set == load_index(deployment.index_dir).manifest.open_set


def test_a_calibration_and_an_add_at_once_keep_both(
    deployment, index_copy: Path, run_together, make_image_folder, tmp_path: Path
) -> None:
    """Both read-modify-write the index under its writers' lock: the threshold and the images stay."""
    images = sorted(make_image_folder(tmp_path / "more", classes=1, per_class=3, size=16).rglob("*.png"))
    run_together(
        [
            ["calibrate", str(index_copy), "--target-fmr", "0.1"],
            ["index", "add", str(index_copy), *map(str, images)],
        ]
    )
    index = load_index(index_copy)
    before = load_index(deployment.index_dir).manifest.open_set
    assert index.manifest.open_set is not None and index.manifest.open_set.objective == "target_fmr"
    assert before is not None and before.objective == "best_f1"
    assert len(index) == 39 and [item.path for item in index.items[36:]] == [str(p.resolve()) for p in images]
