import numpy as np
import pytest
import torch

from embedlab.config import DataConfig
from embedlab.data.images import InMemoryImages
from embedlab.data.splits import prepare_data
from embedlab.training.validation import score_validation


def _images(labels, is_query=None, is_gallery=None) -> InMemoryImages:
    n = len(labels)
    return InMemoryImages(
        labels=torch.tensor(labels),
        is_query=None if is_query is None else torch.tensor(is_query),
        is_gallery=None if is_gallery is None else torch.tensor(is_gallery),
        images=torch.zeros(n, 1, 2, 2, dtype=torch.uint8),
    )


def test_a_class_with_one_image_is_a_query_without_positives_not_a_crash() -> None:
    embeddings = np.eye(4, dtype=np.float32)
    result = score_validation(embeddings, None, _images([0, 0, 1, 2]), None, ["precision_at_1", "map_at_r"])
    assert result.n_queries == 4 and result.n_queries_without_positives == 2
    # all similarities tie at 0, so each label-0 query finds the other label-0 item first (lower index)
    assert result.metrics["precision_at_1"] == pytest.approx(1.0)


def test_csv_roles_score_only_queries_against_gallery_items() -> None:
    # item 0 (label 0) is the only query; its nearest item overall is item 1 (label 1), which is not in
    # the gallery, so among gallery items the first is item 2 (label 0): precision_at_1 = 1.
    embeddings = np.array([[1.0, 0.0], [1.0, 0.01], [0.9, 0.4], [0.0, 1.0]], dtype=np.float32)
    data = _images([0, 1, 0, 1], is_query=[True, False, False, False], is_gallery=[False, False, True, True])
    result = score_validation(embeddings, None, data, None, ["precision_at_1"])
    assert result.n_queries == 1 and result.metrics["precision_at_1"] == pytest.approx(1.0)
    without_roles = score_validation(embeddings, None, _images([0, 1, 0, 1]), None, ["precision_at_1"])
    assert without_roles.n_queries == 4


def test_csv_role_columns_reach_the_validation_split(tmp_path, image_csv) -> None:
    text = image_csv.read_text().splitlines()
    rows = [text[0] + ",is_query,is_gallery"]
    for n, line in enumerate(text[1:]):
        rows.append(line + (",1,0" if n % 2 == 0 else ",0,1"))
    image_csv.write_text("\n".join(rows) + "\n")
    data = prepare_data(DataConfig(dataset=str(image_csv), image_size=8))
    assert data.query.is_query is not None and int(data.query.is_query.sum()) == 5
    assert data.query.is_gallery is not None and int(data.query.is_gallery.sum()) == 5


def test_the_summary_counts_what_is_scored_with_the_roles() -> None:
    from embedlab.training.validation import summarize_validation

    data = _images(
        [0, 0, 1, 1, 2, 2], is_query=[True, False, True, False, True, False], is_gallery=[False, True] * 3
    )
    summary = summarize_validation(data, None)
    assert (summary.queries, summary.gallery, summary.identities) == (3, 3, 3)
    assert summary.without_positives == 0 and summary.all_positive == 0
    assert summary.warnings() == []
    assert summary.lines() == [
        "validation: 3 queries, 3 gallery items (the validation set itself), 3 identities among the "
        "queries, 0 queries without positives"
    ]


def test_one_identity_and_an_all_positive_gallery_are_warned_of() -> None:
    from embedlab.training.validation import summarize_validation

    # five queries of one identity against a gallery that is all of that identity: every metric is 1.0
    data = _images([7] * 8, is_query=[True] * 5 + [False] * 3, is_gallery=[False] * 5 + [True] * 3)
    summary = summarize_validation(data, None)
    assert (summary.queries, summary.gallery, summary.identities, summary.all_positive) == (5, 3, 1, 5)
    warnings = summary.warnings()
    assert len(warnings) == 2
    assert "every validation query is of one identity" in warnings[0]
    assert "5 of 5 validation queries search a gallery in which every item" in warnings[1]


def test_most_queries_without_positives_are_warned_of() -> None:
    from embedlab.training.validation import summarize_validation

    train = _images([0, 1, 2, 3])
    summary = summarize_validation(_images([0, 5, 6, 7]), train)  # only the label-0 query has a positive
    assert (summary.queries, summary.gallery, summary.without_positives) == (4, 4, 3)
    assert not summary.searches_itself
    assert [w for w in summary.warnings() if "3 of 4 validation queries have no positive" in w]
