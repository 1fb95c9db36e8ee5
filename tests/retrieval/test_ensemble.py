import numpy as np
import pytest

from embedlab.retrieval.ensemble import concatenate_embeddings


def test_hand_example_weights_and_normalisation() -> None:
    first = np.array([[2.0, 0.0], [0.0, 1.0]])
    second = np.array([[0.0, 3.0], [0.0, 1.0]])
    out = concatenate_embeddings([first, second], [1.0, 0.5])
    np.testing.assert_allclose(out[0], np.array([1, 0, 0, 0.5]) / np.sqrt(1.25), atol=1e-6)
    np.testing.assert_allclose(out[1], np.array([0, 1, 0, 0.5]) / np.sqrt(1.25), atol=1e-6)


def test_cosine_of_the_ensemble_is_the_weighted_mean_of_the_members_cosines() -> None:
    rng = np.random.default_rng(0)
    members = [rng.normal(size=(6, d)) for d in (4, 7, 3)]
    weights = [1.0, 0.8, 0.55]
    out = concatenate_embeddings(members, weights)
    cosines = [(m / np.linalg.norm(m, axis=1, keepdims=True)) for m in members]
    expected = sum(w**2 * (c @ c.T) for w, c in zip(weights, cosines, strict=True)) / sum(
        w**2 for w in weights
    )
    np.testing.assert_allclose(out @ out.T, expected, atol=1e-6)


def test_mismatched_members_are_errors() -> None:
    with pytest.raises(ValueError, match=r"row counts \[2, 3\]"):
        concatenate_embeddings([np.ones((2, 2)), np.ones((3, 2))], [1, 1])
    with pytest.raises(ValueError, match="2 embedding sets but 1 weights"):
        concatenate_embeddings([np.ones((2, 2)), np.ones((2, 2))], [1])
    with pytest.raises(ValueError, match="positive"):
        concatenate_embeddings([np.ones((2, 2))], [0])
