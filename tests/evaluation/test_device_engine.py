"""The torch evaluation engine, run on CPU tensors, against the numpy engine: the same values (ties,
exclusions, protocols, averaging, every metric), the out-of-memory retry, and the device choice."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest
import torch

from embedlab.evaluation import evaluate_retrieval, evaluate_scenarios
from embedlab.evaluation.device_engine import iter_device_ranks
from embedlab.evaluation.labels import LabelIndex
from embedlab.evaluation.metrics import metric_values
from embedlab.evaluation.ranks import RankPlan
from embedlab.metric_names import parse_metrics
from embedlab.retrieval.devices import nvidia_device_present
from embedlab.retrieval.exclusions import make_exclusions

from .conftest import ALL_METRICS

CPU_TENSORS = torch.device("cpu")
# every metric kind, with a cutoff deeper than the conftest's list reaches
METRICS = [*ALL_METRICS, "recall_at_10"]
# Small enough that every problem here is split into several blocks of queries.
SMALL_BLOCKS = 64 << 10


def _clustered(n: int, dim: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(classes, size=n)
    centres = rng.normal(size=(classes, dim))
    return (centres[labels] + rng.normal(scale=0.8, size=(n, dim))).astype(np.float32), labels


def assert_same_results(**kwargs: object) -> None:
    """evaluate_retrieval on the numpy engine and on the torch engine (CPU tensors) agree."""
    on_numpy = evaluate_retrieval(**kwargs, device="cpu", max_memory_bytes=SMALL_BLOCKS)  # type: ignore[arg-type]
    on_torch = evaluate_retrieval(**kwargs, device=CPU_TENSORS, max_memory_bytes=SMALL_BLOCKS)  # type: ignore[arg-type]
    assert list(on_torch.metrics) == list(on_numpy.metrics)
    for name, value in on_numpy.metrics.items():
        assert abs(on_torch.metrics[name] - value) <= 1e-6, name
    assert on_torch.n_queries_without_positives == on_numpy.n_queries_without_positives
    assert on_torch.per_class == on_numpy.per_class


def test_a_set_searched_in_itself_matches_the_numpy_engine() -> None:
    embeddings, labels = _clustered(300, 8, 12, seed=0)
    assert_same_results(query_embeddings=embeddings, query_labels=labels, metrics=METRICS, per_class=True)


def test_tied_similarities_are_ranked_by_gallery_index_like_the_numpy_engine(
    tie_heavy: Callable[..., np.ndarray], reference: Callable[..., tuple[dict[str, float], int, dict]]
) -> None:
    embeddings = tie_heavy(120, seed=1)
    labels = np.random.default_rng(1).integers(5, size=120)
    assert_same_results(query_embeddings=embeddings, query_labels=labels, metrics=METRICS)
    expected, _n_without, _per_class = reference(embeddings, labels, metrics=METRICS)
    got = evaluate_retrieval(embeddings, labels, metrics=METRICS, device=CPU_TENSORS).metrics
    assert got == pytest.approx(expected, abs=1e-12)


def test_mrr_beyond_the_depth_counts_ties_over_the_whole_row(tie_heavy: Callable[..., np.ndarray]) -> None:
    # Without map the depth is 1: most first positives lie beyond it, many tied with other items.
    embeddings = tie_heavy(150, seed=10)
    labels = np.random.default_rng(10).integers(12, size=150)
    assert_same_results(query_embeddings=embeddings, query_labels=labels, metrics=["precision_at_1", "mrr"])


def test_a_separate_gallery_with_duplicated_rows_and_ignore_groups_matches() -> None:
    queries, query_labels = _clustered(90, 6, 8, seed=2)
    gallery, gallery_labels = _clustered(150, 6, 8, seed=3)
    # Every gallery row twice: each pair ties exactly, and only the index rule orders it.
    gallery = np.repeat(gallery, 2, axis=0)
    gallery_labels = np.repeat(gallery_labels, 2)
    rng = np.random.default_rng(4)
    assert_same_results(
        query_embeddings=queries,
        query_labels=query_labels,
        gallery_embeddings=gallery,
        gallery_labels=gallery_labels,
        query_groups=rng.integers(10, size=90),
        gallery_groups=rng.integers(10, size=300),
        metrics=METRICS,
    )


def test_quantised_embeddings_macro_average_and_queries_without_positives_match() -> None:
    rng = np.random.default_rng(5)
    queries = rng.integers(-2, 3, size=(80, 5)).astype(np.float32)
    gallery = rng.integers(-2, 3, size=(200, 5)).astype(np.float32)
    # Labels 7 and 8 are absent from the gallery: those queries have no positive (R = 0).
    query_labels = rng.integers(9, size=80)
    gallery_labels = rng.integers(7, size=200)
    for without_positives in ("exclude", "zero"):
        assert_same_results(
            query_embeddings=queries,
            query_labels=query_labels,
            gallery_embeddings=gallery,
            gallery_labels=gallery_labels,
            metrics=METRICS,
            average="macro",
            without_positives=without_positives,
            similarity="inner_product",
        )


def test_scenarios_and_a_lone_query_label_match() -> None:
    embeddings, labels = _clustered(160, 8, 10, seed=6)
    labels[0] = 99  # a query whose label nobody else has: R = 0 when searched in itself
    is_top = np.arange(160) % 3 == 0
    scenarios = {"top_vs_top": (is_top, is_top), "lateral_vs_top": (~is_top, is_top)}
    on_numpy, on_torch = (
        evaluate_scenarios(embeddings, labels, scenarios=scenarios, metrics=METRICS, device=device)
        for device in ("cpu", CPU_TENSORS)
    )
    for name in scenarios:
        assert on_torch[name].metrics == pytest.approx(on_numpy[name].metrics, abs=1e-6)
        assert on_torch[name].n_queries_without_positives == on_numpy[name].n_queries_without_positives


def test_a_rescored_block_with_signed_zeros_is_ranked_as_the_numpy_engine_ranks_it() -> None:
    embeddings, labels = _clustered(100, 4, 6, seed=7)

    def rescore(similarities: np.ndarray, start: int, stop: int) -> None:
        # Few distinct values, -0.0 and 0.0 among them (they must tie), exclusions kept at -inf.
        rng = np.random.default_rng(start)
        values = rng.choice(np.array([-0.5, -0.0, 0.0, 0.25, 0.5], dtype=np.float32), size=similarities.shape)
        np.copyto(similarities, np.where(similarities == -np.inf, -np.inf, values))

    results = [
        evaluate_retrieval(embeddings, labels, metrics=METRICS, rescore=rescore, device=device)
        for device in ("cpu", CPU_TENSORS)
    ]
    # The default block size: one block, so both engines draw the same rescored values.
    assert results[1].metrics == pytest.approx(results[0].metrics, abs=1e-6)
    plain = evaluate_retrieval(embeddings, labels, metrics=METRICS, device="cpu")
    assert results[0].metrics["map"] != pytest.approx(plain.metrics["map"])


def _device_values(product: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> dict[str, np.ndarray]:
    embeddings, labels = _clustered(40, 8, 4, seed=8)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    label_index = LabelIndex.build(labels)
    specs = parse_metrics(METRICS)
    values = {spec.name: np.zeros(40) for spec in specs}
    for block in iter_device_ranks(
        embeddings,
        embeddings,
        label_index.codes_of(labels),
        label_index,
        make_exclusions(40, 40, exclude_self=True),
        RankPlan.of(specs),
        CPU_TENSORS,
        max_memory_bytes=1 << 20,
        product=product,
    ):
        for spec in specs:
            values[spec.name][block.start : block.stop] = metric_values(spec, block.ranks, block.n_positives)
    return values


def test_running_out_of_device_memory_halves_the_block_and_gives_the_same_values() -> None:
    calls: list[int] = []

    def fails_on_big_blocks(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        calls.append(left.shape[0])
        if left.shape[0] > 10:
            raise torch.cuda.OutOfMemoryError("injected: CUDA out of memory")
        return left @ right

    expected = _device_values(torch.matmul)
    got = _device_values(fails_on_big_blocks)
    assert calls == [40, 20, 10, 10, 10, 10]
    for name, values in expected.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


def test_one_row_that_does_not_fit_raises_the_out_of_memory_error() -> None:
    def always_fails(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("injected")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        _device_values(always_fails)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine where torch sees no GPU")
def test_cuda_without_a_gpu_is_a_clear_error() -> None:
    embeddings, labels = _clustered(20, 4, 3, seed=9)
    with pytest.raises(ValueError, match=r"device='cuda' asks for a GPU, but torch sees none"):
        evaluate_retrieval(embeddings, labels, device="cuda")
    with pytest.raises(ValueError, match=r"device='cuda:1'.*is_available\(\) is False"):
        evaluate_retrieval(embeddings, labels, device="cuda:1")


def test_an_unknown_device_lists_the_choices() -> None:
    embeddings, labels = _clustered(20, 4, 3, seed=9)
    with pytest.raises(ValueError, match=r"device must be one of auto, cpu, cuda, cuda:N, got 'gpu'"):
        evaluate_retrieval(embeddings, labels, device="gpu")


@pytest.mark.skipif(nvidia_device_present(), reason="auto imports torch where an NVIDIA device exists")
def test_auto_evaluates_numpy_arrays_without_importing_torch() -> None:
    probe = (
        "import sys\n"
        "import numpy as np\n"
        "from embedlab.evaluation import evaluate_retrieval\n"
        "x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)\n"
        "result = evaluate_retrieval(x, np.arange(30) % 3, metrics=['map_at_r'], device='auto')\n"
        "print(0 <= result.metrics['map_at_r'] <= 1, 'torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["True", "False"]
