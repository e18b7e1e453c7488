"""The batched UniMatch strong view against torchvision's ColorJitter on PIL images and the
per-image pipeline of the data workers (data.transforms.strong_color)."""

import itertools

import numpy as np
import pytest
import torch
from distributions import CHI2_999, chi_square, ks_critical, ks_statistic
from PIL import Image, ImageFilter
from torchvision import transforms as T
from torchvision.transforms import functional as F_pil

from semiseg.augment.strong import StrongPlan, apply_strong, color_jitter, strong_plan

PIL_ADJUST = (F_pil.adjust_brightness, F_pil.adjust_contrast, F_pil.adjust_saturation)


def random_images(n: int, size: int = 24, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    # smooth colour fields plus noise, like photographs rather than white noise
    base = torch.rand(n, 3, 4, 4, generator=g) * 255
    up = torch.nn.functional.interpolate(base, size=size, mode="bilinear", align_corners=False)
    noise = torch.randn(n, 3, size, size, generator=g) * 10
    return (up + noise).round().clamp(0, 255).to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def from_pil(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


def pil_jitter(image: Image.Image, order, factors) -> Image.Image:
    """torchvision's ColorJitter.forward on a PIL image, its order and factors given."""
    for op_index in order:
        if op_index == 3:
            image = F_pil.adjust_hue(image, float(factors[3]))
        else:
            image = PIL_ADJUST[op_index](image, float(factors[op_index]))
    return image


def test_jitter_plan_matches_colorjitter_get_params_distribution():
    """Order: every one of the 24 permutations equally likely; factors: U(0.5, 1.5) x 3 and
    U(-0.25, 0.25), compared with torchvision's own sampler by a two-sample KS test."""
    torch.manual_seed(0)
    n = 6000
    plan = strong_plan(n, torch.Generator().manual_seed(1))
    reference = [T.ColorJitter.get_params(*[(0.5, 1.5)] * 3, (-0.25, 0.25)) for _ in range(n)]
    ref_factors = np.array([r[1:] for r in reference], dtype=float)
    for k in range(4):
        assert ks_statistic(plan.factors[:, k], ref_factors[:, k]) < ks_critical(n, n), k
    cells = list(itertools.permutations(range(4)))
    ours = [0] * 24
    theirs = [0] * 24
    for row in plan.order.tolist():
        ours[cells.index(tuple(row))] += 1
    for r in reference:
        theirs[cells.index(tuple(r[0].tolist()))] += 1
    assert chi_square(ours, theirs) < CHI2_999[23]


def test_the_three_coins_have_the_workers_probabilities():
    n = 20000
    plan = strong_plan(n, torch.Generator().manual_seed(2))
    for coin, p in ((plan.jitter, 0.8), (plan.gray, 0.2), (plan.blur, 0.5)):
        # within 4.5 binomial standard deviations
        assert abs(coin.float().mean().item() - p) < 4.5 * (p * (1 - p) / n) ** 0.5
    assert 0.1 <= plan.sigma.min() and plan.sigma.max() <= 2.0
    reference = np.random.default_rng(0).uniform(0.1, 2.0, n)
    assert ks_statistic(plan.sigma, reference) < ks_critical(n, n)


def test_color_jitter_equals_torchvision_on_pil_images():
    """Each image in its own order with its own factors: the enhance blends and the 8-bit HSV hue
    are PIL's own arithmetic, so the batch equals torchvision's ColorJitter on PIL images."""
    images = random_images(8)
    plan = strong_plan(8, torch.Generator().manual_seed(3))
    ours = color_jitter(images, plan.order, plan.factors)
    for i in range(8):
        expected = from_pil(pil_jitter(to_pil(images[i]), plan.order[i].tolist(), plan.factors[i]))
        assert torch.equal(ours[i], expected), (i, plan.order[i].tolist())


def test_hue_equals_pils_8_bit_hue():
    """PIL turns the hue through an 8-bit HSV image (1/256 of a turn per step, 8-bit S and V);
    augment.intensity.hue does the same arithmetic on the batch."""
    images = random_images(8, seed=6)
    for shift in (-0.25, -0.1, 0.0, 0.1, 0.25):
        order = torch.tensor([[3, 0, 1, 2]] * 8)
        ours = color_jitter(images, order, torch.tensor([[1.0, 1.0, 1.0, shift]] * 8))
        pil = torch.stack([from_pil(F_pil.adjust_hue(to_pil(im), shift)) for im in images])
        assert torch.equal(ours, pil), shift
        if shift:
            assert (ours.int() - images.int()).abs().float().mean() > 4  # it did turn


@pytest.mark.parametrize("op_index", [0, 1, 2])
def test_each_enhance_factor_at_its_edges_equals_pil(op_index):
    """brightness / contrast / saturation at 0.5, 1 and 1.5, then a hue turn of 0 (lossy in PIL's
    8-bit HSV, as in torchvision's ColorJitter on PIL images)."""
    images = random_images(3, seed=4)
    for factor in (0.5, 1.0, 1.5):
        order = torch.tensor([[op_index, 3, (op_index + 1) % 3, (op_index + 2) % 3]] * 3)
        factors = torch.tensor([[1.0, 1.0, 1.0, 0.0]] * 3)
        factors[:, op_index] = factor
        ours = color_jitter(images, order, factors)
        for i in range(3):
            pil = pil_jitter(to_pil(images[i]), order[i].tolist(), factors[i])
            assert torch.equal(ours[i], from_pil(pil)), (op_index, factor)


def test_apply_strong_follows_the_workers_pipeline():
    """Jitter, then grayscale, then blur (PIL's box approximation, exactly), each only where its
    coin came up, as strong_color."""
    images = random_images(6, seed=5)
    plan = StrongPlan(
        jitter=torch.tensor([True, False, True, False, True, False]),
        order=torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]] * 3),
        factors=torch.tensor([[1.3, 0.7, 1.2, 0.1]] * 6),
        gray=torch.tensor([False, True, True, False, False, False]),
        blur=torch.tensor([False, False, False, True, True, False]),
        sigma=torch.full((6,), 1.0),
    )
    ours = apply_strong(images, plan)
    assert torch.equal(ours[5], images[5])  # no coin: untouched
    for i in range(6):
        img = to_pil(images[i])
        if plan.jitter[i]:
            img = pil_jitter(img, plan.order[i].tolist(), plan.factors[i])
        if plan.gray[i]:
            img = img.convert("L").convert("RGB")
            assert torch.equal(ours[i][0], ours[i][1]) and torch.equal(ours[i][1], ours[i][2])
        if plan.blur[i]:
            img = img.filter(ImageFilter.GaussianBlur(radius=float(plan.sigma[i])))
        diff = (ours[i].int() - from_pil(img).int()).abs()
        assert diff.max() <= (1 if plan.gray[i] else 0), i  # torchvision's gray: float luma
    assert ours.dtype == torch.uint8 and not torch.equal(ours, images)
