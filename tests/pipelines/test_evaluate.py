"""evaluate_run_steps: each row is the previous one plus its step, computed as the pieces would be."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from embedlab.config import load_config
from embedlab.data.splits import prepare_data
from embedlab.embeddings.encoder import EnsembleMember
from embedlab.evaluation import evaluate_retrieval
from embedlab.evaluation.steps import RetrievalProblem
from embedlab.models.inference import embed
from embedlab.models.tta import TestTimeAugmentation
from embedlab.pipelines.evaluate import evaluate_run, evaluate_run_steps
from embedlab.retrieval.ensemble import concatenate_embeddings
from embedlab.retrieval.expansion import query_expansion
from embedlab.retrieval.postprocessing import StepConfig
from embedlab.retrieval.reranking import KReciprocalParameters, KReciprocalReranker
from embedlab.training.fit import fit
from embedlab.training.run_dir import load_run

OVERRIDES = [
    "data.dataset=digits",
    "data.validation.split=classes",
    "data.validation.fraction=0.4",
    "train.epochs=1",
    "train.batch_size=32",
    "train.max_steps_per_epoch=6",
    "model.embedding_dim=16",
    "loss={name: ContrastiveLoss}",
]
METRICS = ["precision_at_1", "map_at_r"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("runs")
    folders = []
    for seed in (0, 1):
        cfg, _ = load_config(None, [*OVERRIDES, f"train.seed={seed}"])
        folders.append(fit(cfg, root / f"seed{seed}").run_dir)
    return folders


def test_rows_follow_the_requested_steps_and_each_matches_its_pieces(runs: list[Path]) -> None:
    tta = TestTimeAugmentation(flip=True)
    steps = [
        StepConfig(name="qe", args={"k": 2, "alpha": 3.0}),
        StepConfig(name="rerank", args={"k1": 5, "k2": 2, "lambda_value": 0.3}),
    ]
    rows = evaluate_run_steps(runs[0], METRICS, ensemble=[EnsembleMember(runs[1], 0.5)], tta=tta, steps=steps)
    assert [row.step for row in rows] == [
        "model",
        "ensemble of 2 runs, weights 1, 0.5",
        "tta flip",
        "qe k=2 alpha=3",
        "rerank k1=5 k2=2 lambda=0.3",
    ]
    assert rows[0].result.metrics == evaluate_run(runs[0], METRICS).metrics

    first, second = load_run(runs[0]), load_run(runs[1])
    cfg = first.config
    data = prepare_data(cfg.data)
    labels = data.query.labels.numpy()
    assert data.gallery is None  # held-out classes searched in themselves
    plain = [embed(run.embedder, data.query) for run in (first, second)]
    ensemble = concatenate_embeddings(plain, [1.0, 0.5])
    assert rows[1].result.metrics == evaluate_retrieval(ensemble, labels, metrics=METRICS).metrics
    viewed = concatenate_embeddings(
        [embed(r.embedder, data.query, tta=tta) for r in (first, second)], [1, 0.5]
    )
    np.testing.assert_allclose(
        list(rows[2].result.metrics.values()),
        list(evaluate_retrieval(viewed, labels, metrics=METRICS).metrics.values()),
        atol=1e-9,
    )
    own = np.arange(len(labels))
    expanded = query_expansion(viewed, viewed, 2, 3.0, exclude_self=True)
    qe = evaluate_retrieval(expanded, labels, viewed, labels, exclude_index=own, metrics=METRICS)
    np.testing.assert_allclose(list(rows[3].result.metrics.values()), list(qe.metrics.values()), atol=1e-9)
    reranker = KReciprocalReranker(expanded, viewed, KReciprocalParameters(5, 2, 0.3), exclude_index=own)
    reranked = evaluate_retrieval(
        expanded, labels, viewed, labels, exclude_index=own, metrics=METRICS, rescore=reranker
    )
    np.testing.assert_allclose(
        list(rows[4].result.metrics.values()), list(reranked.metrics.values()), atol=1e-9
    )
    for row in rows:
        assert all(0.0 <= value <= 1.0 for value in row.result.metrics.values())
        assert row.step_seconds >= 0 and row.scoring_seconds > 0
        assert set(row.to_dict()) >= {"step", *METRICS, "n_queries", "step_seconds", "scoring_seconds"}


def test_whitening_on_train_and_dba_rows(runs: list[Path]) -> None:
    steps = [
        StepConfig(name="whiten", args={"dim": 8, "fit_on": "train"}),
        StepConfig(name="dba", args={"k": 1, "alpha": 1.0}),
    ]
    rows = evaluate_run_steps(runs[0], METRICS, steps=steps)
    assert [row.step for row in rows] == ["model", "whiten 8 on train", "dba k=1 alpha=1"]
    assert rows[1].result.n_queries == rows[0].result.n_queries


def test_an_ensemble_member_of_another_split_is_refused(runs: list[Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    record = json.loads((other / "split.json").read_text())
    record["validation_classes"] = record["train_classes"][:4]
    (other / "split.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"another split .*split.json differs in validation_classes"):
        evaluate_run_steps(runs[0], METRICS, ensemble=[EnsembleMember(other)])


def test_problem_of_csv_roles_hides_each_query_from_itself() -> None:
    x = np.eye(4, dtype=np.float32)
    problem = RetrievalProblem.build(
        x, np.array([0, 0, 1, 1]), query_rows=np.array([0, 2]), gallery_rows=np.array([0, 1, 3])
    )
    np.testing.assert_array_equal(problem.exclude_index, [0, -1])
    np.testing.assert_array_equal(problem.gallery_labels, [0, 0, 1])
