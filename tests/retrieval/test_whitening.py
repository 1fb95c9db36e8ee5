import numpy as np
import pytest

from embedlab.retrieval.whitening import PCAWhitening


def test_hand_example_scales_each_principal_axis_to_unit_variance() -> None:
    # Embeddings are L2-normalised before fitting, so the spread comes from repetition: the points on
    # the x axis appear twice as often as those on the y axis.
    points = np.array([[1, 0], [-1, 0], [1, 0], [-1, 0], [0, 1], [0, -1]], dtype=np.float32)
    whitening = PCAWhitening.fit(points, dim=2)
    np.testing.assert_allclose(whitening.mean, [0, 0], atol=1e-12)
    # variances (unbiased, n - 1 = 5): x 4/5, y 2/5; axes ordered by variance, signs positive.
    np.testing.assert_allclose(np.abs(whitening.projection), [[1 / np.sqrt(0.8), 0], [0, 1 / np.sqrt(0.4)]])
    # (1, 1)/sqrt(2) -> (1/sqrt(0.8), 1/sqrt(0.4)) up to scale -> normalised (1, sqrt 2)/sqrt 3.
    out = whitening.transform(np.array([[1.0, 1.0]]))
    np.testing.assert_allclose(out[0], np.array([1.0, np.sqrt(2)]) / np.sqrt(3), atol=1e-6)


def test_whitened_training_data_has_identity_covariance_and_dimension_is_cut() -> None:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(500, 8)) * np.array([5, 4, 3, 2, 1, 1, 0.5, 0.2]) + 3
    whitening = PCAWhitening.fit(data, dim=4)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    projected = (unit - whitening.mean) @ whitening.projection
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(4), atol=1e-8)
    out = whitening.transform(data)
    assert out.shape == (500, 4) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_save_and_load_round_trip_and_errors(tmp_path) -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(50, 6))
    whitening = PCAWhitening.fit(data, dim=3)
    whitening.save(tmp_path / "whitening.npz")
    loaded = PCAWhitening.load(tmp_path / "whitening.npz")
    np.testing.assert_array_equal(loaded.transform(data), whitening.transform(data))
    with pytest.raises(ValueError, match=r"\[1, 6\]"):
        PCAWhitening.fit(data, dim=7)
    with pytest.raises(ValueError, match=r"\[1, 3\]"):
        PCAWhitening.fit(data[:4], dim=4)
    with pytest.raises(ValueError, match="6-d embeddings, got 5-d"):
        whitening.transform(data[:, :5])
