"""The post-processing registry: every step from its `{name, args}` config, strict names and arguments,
one validator per step, and the sides each step changes against the functions it wraps."""

from __future__ import annotations

import numpy as np
import pytest

from embedlab.retrieval.expansion import database_augmentation, query_expansion, weighted_neighbour_sum
from embedlab.retrieval.postprocessing import (
    STEPS,
    PostprocessingStep,
    Sides,
    StepConfig,
    Whiten,
    apply_step,
    build_step,
    build_steps,
    expand_queries,
    prepare_gallery,
    steps_from_options,
    transform_queries,
)
from embedlab.retrieval.reranking import KReciprocalReranker
from embedlab.retrieval.whitening import PCAWhitening

CONFIGS = {
    "whiten": {"dim": 4, "fit_on": "gallery"},
    "dba": {"k": 2, "alpha": 3.0},
    "qe": {"k": 2, "alpha": 3.0},
    "rerank": {"k1": 5, "k2": 2, "lambda_value": 0.3},
}


def data(n: int = 20, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_every_registered_step_is_covered() -> None:
    assert STEPS.names() == sorted(CONFIGS)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_every_step_builds_from_its_config_and_gives_it_back(name: str) -> None:
    config = StepConfig(name=name, args=CONFIGS[name])
    step = build_step(config)
    assert isinstance(step, PostprocessingStep)
    assert step.name == name and step.config() == config
    assert build_step(config.model_dump()).config() == config
    assert step.label().startswith(name)


def test_labels_are_the_rows_of_embedlab_evaluate() -> None:
    labels = [build_step(StepConfig(name=n, args=a)).label() for n, a in CONFIGS.items()]
    assert labels == [
        "whiten 4 on gallery",
        "dba k=2 alpha=3",
        "qe k=2 alpha=3",
        "rerank k1=5 k2=2 lambda=0.3",
    ]


def test_an_unknown_name_lists_the_valid_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown post-processing step 'qee'\. Did you mean 'qe'\?.*dba, qe"
    ):
        build_step({"name": "qee", "args": {}})


def test_an_unknown_argument_is_an_error_naming_the_valid_ones() -> None:
    with pytest.raises(TypeError, match=r"'qe' does not take 'kk'; it takes: alpha, k"):
        build_step({"name": "qe", "args": {"kk": 2, "alpha": 3.0}})
    with pytest.raises(ValueError, match="extra"):
        build_step({"name": "qe", "args": {}, "arguments": {}})


@pytest.mark.parametrize("name", ["qe", "dba"])
@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_expansion_k_is_a_whole_number_of_at_least_one(name: str, k: object) -> None:
    with pytest.raises(ValueError, match="k must be a whole number >= 1"):
        build_step({"name": name, "args": {"k": k, "alpha": 1.0}})
    with pytest.raises(ValueError, match="alpha must be a number >= 0"):
        build_step({"name": name, "args": {"k": 1, "alpha": -1.0}})
    assert build_step({"name": name, "args": {"k": 1, "alpha": 0}}).config().args == {"k": 1, "alpha": 0.0}


def test_the_other_validators() -> None:
    with pytest.raises(ValueError, match="whitening dimension must be a whole number >= 1"):
        build_step({"name": "whiten", "args": {"dim": 0}})
    with pytest.raises(ValueError, match="gallery or train"):
        build_step({"name": "whiten", "args": {"dim": 4, "fit_on": "queries"}})
    with pytest.raises(ValueError, match="k1 and k2 must be >= 1"):
        build_step({"name": "rerank", "args": {"k1": 0}})
    with pytest.raises(ValueError, match=r"lambda must lie in \[0, 1\]"):
        build_step({"name": "rerank", "args": {"lambda_value": 2.0}})


def test_command_line_options_become_configs_in_order_and_errors_name_the_option() -> None:
    configs = steps_from_options(whiten=4, whiten_on="train", dba="1,2", qe="2,3", rerank="20,6,0.3")
    assert [c.model_dump() for c in configs] == [
        {"name": "whiten", "args": {"dim": 4, "fit_on": "train"}},
        {"name": "dba", "args": {"k": 1, "alpha": 2.0}},
        {"name": "qe", "args": {"k": 2, "alpha": 3.0}},
        {"name": "rerank", "args": {"k1": 20, "k2": 6, "lambda_value": 0.3}},
    ]
    assert steps_from_options() == []
    with pytest.raises(ValueError, match="--qe takes 2 comma-separated numbers"):
        steps_from_options(qe="two")
    with pytest.raises(ValueError, match="--dba: K must be a whole number"):
        steps_from_options(dba="1.5,3")
    with pytest.raises(ValueError, match="--qe: the number of neighbours k must be a whole number >= 1"):
        steps_from_options(qe="0,3")
    with pytest.raises(ValueError, match=r"--rerank: lambda must lie in \[0, 1\]"):
        steps_from_options(rerank="20,6,3")
    with pytest.raises(ValueError, match="--whiten-on must be gallery or train"):
        steps_from_options(whiten=4, whiten_on="test")
    with pytest.raises(ValueError, match="--whiten: the whitening dimension"):
        steps_from_options(whiten=0)


def test_applied_steps_equal_the_functions_they_wrap() -> None:
    queries, gallery = data(6, seed=1), data(20)
    groups = np.arange(20) % 5
    sides = Sides(queries, gallery, query_groups=np.arange(6) % 5, gallery_groups=groups)

    whitened, rescore = apply_step(build_step({"name": "whiten", "args": {"dim": 4}}), sides)
    whitening = PCAWhitening.fit(gallery, 4)
    np.testing.assert_array_equal(whitened.queries, whitening.transform(queries))
    np.testing.assert_array_equal(whitened.gallery, whitening.transform(gallery))
    assert rescore is None

    augmented, _ = apply_step(build_step({"name": "dba", "args": {"k": 2, "alpha": 3}}), sides)
    np.testing.assert_array_equal(augmented.gallery, database_augmentation(gallery, 2, 3.0, groups=groups))
    assert augmented.queries is queries

    expanded, _ = apply_step(build_step({"name": "qe", "args": {"k": 2, "alpha": 3}}), sides)
    np.testing.assert_array_equal(
        expanded.queries, query_expansion(queries, gallery, 2, 3.0, **sides.exclusions())
    )
    assert expanded.gallery is gallery

    same, rescore = apply_step(build_step({"name": "rerank", "args": {"k1": 5, "k2": 2}}), sides)
    assert isinstance(rescore, KReciprocalReranker)
    assert same.queries is queries and same.gallery is gallery


def test_whitening_a_set_searched_in_itself_keeps_one_array() -> None:
    x = data()
    sides, _ = apply_step(build_step({"name": "whiten", "args": {"dim": 4}}), Sides(x, x))
    assert sides.in_itself
    with pytest.raises(ValueError, match="needs a run folder"):
        apply_step(build_step({"name": "whiten", "args": {"dim": 4, "fit_on": "train"}}), Sides(x, x))
    train = data(30, seed=2)
    on_train, _ = apply_step(
        build_step({"name": "whiten", "args": {"dim": 4, "fit_on": "train"}}), Sides(x, x), lambda: train
    )
    np.testing.assert_array_equal(on_train.queries, PCAWhitening.fit(train, 4).transform(x))


def test_index_sides_whiten_and_augment_the_gallery_then_map_and_expand_queries() -> None:
    gallery, queries = data(20), data(3, seed=3)
    steps = build_steps(
        [{"name": "whiten", "args": {"dim": 4}}, {"name": "dba", "args": {"k": 2, "alpha": 1}}]
    )
    stored = prepare_gallery(steps, gallery)
    whitening = PCAWhitening.fit(gallery, 4)
    np.testing.assert_allclose(stored, database_augmentation(whitening.transform(gallery), 2, 1.0), atol=1e-6)

    assert isinstance(steps[0], Whiten)
    loaded = build_steps(
        [step.config() for step in steps] + [StepConfig(name="qe", args={"k": 2, "alpha": 3})],
        whitening=steps[0].whitening,
    )
    mapped = transform_queries(loaded, queries)
    np.testing.assert_array_equal(mapped, whitening.transform(queries))

    def search(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores = vectors @ stored.T
        ids = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, ids, axis=1), ids

    scores, ids = search(mapped, 2)
    expected = weighted_neighbour_sum(mapped, stored, scores, ids, 3.0)
    np.testing.assert_allclose(expand_queries(loaded, mapped, stored, search), expected, atol=1e-6)


def test_an_unfitted_whitening_is_an_error() -> None:
    with pytest.raises(ValueError, match="has not been fitted"):
        transform_queries(build_steps([{"name": "whiten", "args": {"dim": 4}}]), data())
