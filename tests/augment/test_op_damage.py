"""semiseg.tools.op_damage: per-class accuracy of a model under each intensity op, on a model whose
answers are worked out by hand (class 1 where the 8-bit mean brightness is above 76)."""

import torch
from torch import nn

from semiseg.augment import intensity as I
from semiseg.tools.op_damage import class_accuracy, format_table, op_damage, random_crops


class BrightIsOne(nn.Module):
    """Logits that pick class 1 where the pixel's mean 8-bit value exceeds 76.5 (0.3 x 255)."""

    def forward(self, images):
        value = I.to_uint8(images).float().mean(1, keepdim=True)
        return torch.cat((76.5 - value, value - 76.5), 1)


def half_light_half_dark(n=4, size=8):
    """Left half light (200), labelled 1; right half dark (40), labelled 0."""
    u8 = torch.full((n, 3, size, size), 40, dtype=torch.uint8)
    u8[..., : size // 2] = 200
    masks = torch.zeros(n, size, size, dtype=torch.long)
    masks[..., : size // 2] = 1
    return I.from_uint8(u8), masks


def test_accuracies_under_ops_match_the_hand_derived_ones():
    images, masks = half_light_half_dark()
    results = op_damage(BrightIsOne(), images, masks, 2, I.IMAS_POLICY)
    assert results["none"] == [1.0, 1.0]
    # invert: 200 -> 55 (read as class 0), 40 -> 215 (read as class 1): nothing right
    assert results["invert [0.0, 0.5)"] == [0.0, 0.0] == results["invert [0.5, 1.0)"]
    # brightness, lower half of u: factor in (0.525, 0.95]: 200 -> above 105, 40 -> below 38
    assert results["brightness [0.0, 0.5)"] == [1.0, 1.0]
    # posterize keeps 4..7 high bits: 200 -> 192..200, 40 -> 32..40
    assert results["posterize [0.5, 1.0)"] == [1.0, 1.0]
    assert "identity [0.0, 0.5)" not in results
    assert len(results) == 1 + 2 * (len(I.IMAS_POLICY.ops) - 1)


def test_a_class_without_pixels_has_no_accuracy():
    images, masks = half_light_half_dark()
    assert class_accuracy(BrightIsOne(), images, masks, 3) == [1.0, 1.0, None]
    table = format_table({"none": [1.0, 0.25, None]}, ["background", "thing", "absent"])
    assert table.splitlines()[1].split() == ["none", "100.0", "25.0", "-"]


def test_random_crops_pad_small_images_and_keep_masks_aligned():
    image = torch.arange(2 * 3 * 10 * 12, dtype=torch.float32).view(2, 3, 10, 12)[1:]
    mask = torch.arange(10 * 12).view(10, 12) % 5
    dataset = [{"image": image[0], "mask": mask}]
    images, masks = random_crops(dataset, 20, crop=16, seed=1)
    assert images.shape == (20, 3, 16, 16) and masks.shape == (20, 16, 16)
    # scale < 1.6 leaves the 10-row image smaller than the crop: padding is ignored (255)
    assert (masks == 255).any()
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3, 4, 255}
