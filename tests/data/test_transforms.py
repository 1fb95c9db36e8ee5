import torch

from embedlab.data.transforms import Preprocess


def test_preprocess_normalises_converts_channels_and_resizes() -> None:
    prep = Preprocess(channels=3, size=4, mean=[0.5] * 3, std=[0.5] * 3)
    grey = torch.full((2, 1, 8, 8), 255, dtype=torch.uint8)
    out = prep(grey)
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out, torch.ones_like(out))
    black = prep(torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    assert torch.allclose(black, -torch.ones_like(black))
