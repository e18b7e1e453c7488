"""In-step strong views of stacked image pairs (change detection): one draw per image."""

import pytest
import torch

from semiseg.augment.intensity import IMAS_POLICY, random_intensity, rgb_images
from semiseg.augment.strong import unimatch_strong


def pair_of_twins(n=4, size=16):
    image = torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(0))
    return torch.cat([image, image], 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda x, g: unimatch_strong(x, g),
        lambda x, g: random_intensity(x, IMAS_POLICY, g),
    ],
)
def test_a_and_b_of_a_pair_get_their_own_draws(make):
    pair = pair_of_twins()
    out = make(pair, torch.Generator().manual_seed(1))
    assert out.shape == pair.shape
    differ = [not torch.equal(out[i, :3], out[i, 3:]) for i in range(pair.shape[0])]
    assert any(differ)  # twins made different: A and B were not drawn together


def test_rgb_images_keeps_each_image_together():
    pair = torch.arange(2 * 6 * 2 * 2, dtype=torch.float32).reshape(2, 6, 2, 2)
    flat = rgb_images(pair)
    assert flat.shape == (4, 3, 2, 2)
    assert torch.equal(flat[1], pair[0, 3:]) and torch.equal(flat[2], pair[1, :3])
    with pytest.raises(ValueError, match="4 channels"):
        rgb_images(torch.zeros(1, 4, 2, 2))
