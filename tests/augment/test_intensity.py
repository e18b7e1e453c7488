"""The batched intensity ops against hand-computed values, PIL, and the public samplers."""

import math
import random

import numpy as np
import pytest
import torch
from distributions import CHI2_999, chi_square
from PIL import Image, ImageOps
from torchvision.transforms.v2 import functional as TF

from semiseg.augment import intensity as I
from semiseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize
from semiseg.errors import ConfigError

# One 2x2 RGB image; channel planes R, G, B.
R = [[10, 200], [50, 100]]
G = [[20, 180], [60, 90]]
B = [[30, 160], [70, 80]]
IMG = torch.tensor([R, G, B], dtype=torch.uint8)[None]


def each(value: float, n: int = 1) -> torch.Tensor:
    return torch.full((n,), float(value))


def red(out: torch.Tensor) -> list:
    return out[0, 0].tolist()


def test_invert_posterize_solarize_by_hand():
    assert red(I.invert(IMG, each(0))) == [[245, 55], [205, 155]]
    # 4 bits: & 0xF0 (200 = 0xC8 -> 0xC0, 50 = 0x32 -> 0x30, 100 = 0x64 -> 0x60)
    assert red(I.posterize(IMG, each(4))) == [[0, 192], [48, 96]]
    assert red(I.posterize(IMG, each(6))) == [[8, 200], [48, 100]]  # & 0xFC
    # values >= threshold are inverted, the threshold itself included
    assert red(I.solarize(IMG, each(100))) == [[10, 55], [50, 155]]
    assert torch.equal(I.solarize(IMG, each(256)), IMG)


def test_autocontrast_by_hand():
    out = I.autocontrast(IMG, each(0))
    # per channel: (x - min) * 255 / (max - min), truncated
    assert out[0, 0].tolist() == [[0, 255], [53, 120]]  # 40 * 255/190 = 53.7, 90 * 255/190 = 120.8
    assert out[0, 1].tolist() == [[0, 255], [63, 111]]  # 40 * 255/160 = 63.75, 70 * 255/160 = 111.6
    assert out[0, 2].tolist() == [[0, 255], [78, 98]]  # 40 * 255/130 = 78.5, 50 * 255/130 = 98.1


def test_equalize_by_hand():
    # PIL's scheme: step = (pixels - count of the top value) // 255; 4 pixels give step 0: no-op
    assert torch.equal(I.equalize(IMG, each(0)), IMG)
    # 255 pixels of 0, 255 of 100, 2 of 200: step = 510 // 255 = 2, lut[v] = (step // 2 +
    # pixels below v) // step: 0 -> 0, 100 -> 256 // 2 = 128, 200 -> 511 // 2 = 255
    values = torch.tensor([0] * 255 + [100] * 255 + [200] * 2, dtype=torch.uint8)
    img = values.view(1, 1, 16, 32).expand(1, 3, 16, 32)
    out = I.equalize(img, each(0))
    assert sorted(out.unique().tolist()) == [0, 128, 255]
    assert (out[img == 100] == 128).all()


def test_brightness_contrast_color_by_hand():
    # brightness: blend with black, truncated
    assert red(I.brightness(IMG, each(0.5))) == [[5, 100], [25, 50]]
    # PIL's luma (19595 R + 38470 G + 7471 B + 2^15) >> 16 = 18, 184, 58, 92; mean 88
    luma = [[18, 184], [58, 92]]
    # contrast 0.5: 0.5 x + 0.5 * 88 (PIL's mean luma rounded to an integer)
    assert red(I.contrast(IMG, each(0.5))) == [[49, 144], [69, 94]]
    # color (saturation) 0.5: luma + 0.5 (x - luma); factor 0 gives the luma in every channel
    assert red(I.color(IMG, each(0.5))) == [[14, 192], [54, 96]]
    gray = I.color(IMG, each(0.0))
    assert all(gray[0, c].tolist() == luma for c in range(3))


def test_sharpness_by_hand():
    img = torch.zeros(1, 3, 3, 3, dtype=torch.uint8)
    img[..., 1, 1] = 130
    # PIL's SMOOTH kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 at the centre: 5 * 130 / 13 = 50;
    # border pixels keep their value
    assert I.sharpness(img, each(0.0))[0, 0].tolist() == [[0, 0, 0], [0, 50, 0], [0, 0, 0]]
    assert I.sharpness(img, each(0.5))[0, 0, 1, 1].item() == 90  # 0.5 * 130 + 0.5 * 50
    assert torch.equal(I.sharpness(img, each(1.0)), img)


def test_blur_box_radius_and_weights_by_hand():
    # sigma 3, 3 passes: sigma^2 / 3 = 3, box length sqrt(12 * 3 + 1) = 6.08: integer radius 2,
    # fraction 5 (2 * 3 - 9) / (6 (3 - 9)) = 15 / 36 (Gwosdek et al.'s extended box)
    assert I.pil_box_radius(torch.tensor([3.0])).item() == pytest.approx(2 + 15 / 36, abs=1e-6)
    assert I.pil_box_radius(torch.tensor([0.0])).item() == 0.0
    # one box of radius 1 (sigma^2 = 3 * 2/3 = 2): 3 taps of 2^24 / 3, the far taps none
    whole, inner, far = I._box_weights(I.pil_box_radius(torch.tensor([math.sqrt(2.0)])))
    assert (whole.item(), inner.item(), far.item()) == (1, 5592405, 0)


def test_blur_by_hand():
    # a 1-row image, sigma sqrt(2): three 3-tap boxes along the row (edges repeated), each pass
    # rounded to 8 bits; the single row's column passes repeat the same pixel: no change
    row = (
        torch.tensor([0, 0, 0, 255, 0, 0, 0], dtype=torch.uint8).view(1, 1, 1, 7).repeat(1, 3, 1, 1)
    )
    out = I.blur(row, torch.tensor([math.sqrt(2.0)]))[0, 0, 0].tolist()
    # pass 1: 85 at 2..4 (255/3); pass 2: 28, 57, 85, 57, 28 (85/3 = 28.3, 170/3 = 56.7);
    # pass 3: (0+0+28)/3 = 9, (0+28+57)/3 = 28, (28+57+85)/3 = 57, (57+85+57)/3 = 66
    assert out == [9, 28, 57, 66, 57, 28, 9]
    flat = torch.full((1, 3, 9, 9), 255, dtype=torch.uint8)  # 8-bit saturation: stays 255
    assert torch.equal(I.blur(flat, each(2.0)), flat)
    assert torch.equal(I.blur(IMG, each(0.0)), IMG)  # radius 0: PIL returns a copy


@pytest.mark.parametrize("sigma", [0.0, 1e-30, 0.1, 0.7, 1.3, 2.0, 5.5])
def test_blur_matches_pils_gaussian_blur(sigma):
    """The public ops' `img.filter(ImageFilter.GaussianBlur(radius=sigma))`, exactly, on images
    smaller than the box too (1 x 1 up to 13 x 17) and on black-and-white ones (saturation)."""
    from PIL import ImageFilter

    gen = torch.Generator().manual_seed(int(sigma * 10))
    for h, w in ((1, 1), (2, 5), (13, 17), (6, 3)):
        images = torch.randint(0, 256, (2, 3, h, w), generator=gen, dtype=torch.uint8)
        images[1] = (images[1] > 127).to(torch.uint8) * 255
        ours = I.blur(images, each(sigma, 2))
        for i in range(2):
            img = Image.fromarray(images[i].permute(1, 2, 0).numpy())
            pil = img.filter(ImageFilter.GaussianBlur(radius=sigma))
            assert torch.equal(ours[i], torch.from_numpy(np.asarray(pil)).permute(2, 0, 1)), (h, w)


def test_blur_gives_each_image_its_own_sigma():
    from PIL import ImageFilter

    images = torch.randint(
        0, 256, (3, 3, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    sigmas = torch.tensor([0.0, 0.4, 1.9])
    ours = I.blur(images, sigmas)
    for i, sigma in enumerate(sigmas.tolist()):
        img = Image.fromarray(images[i].permute(1, 2, 0).numpy())
        pil = np.asarray(img.filter(ImageFilter.GaussianBlur(radius=sigma)))
        assert torch.equal(ours[i], torch.from_numpy(pil).permute(2, 0, 1)), sigma


def test_hue_by_hand():
    pure_red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(1, 3, 1, 1)
    # 8-bit HSV as PIL: H 0 + trunc(0.5 * 255) = 127, just short of cyan (127.5): sector 2,
    # f = 127 * 6 / 255 - 2 = 0.988..., B = round(255 * 0.988...) = 252
    assert I.hue(pure_red, each(0.5)).flatten().tolist() == [0, 255, 252]
    # -1/3: H = (0 - 85) mod 256 = 171, sector 4, f = 0.0235...: R = round(255 f) = 6
    assert I.hue(pure_red, each(-1 / 3)).flatten().tolist() == [6, 0, 255]
    assert torch.equal(I.hue(IMG, each(0.0)), IMG)


def random_batch(n=4, h=12, w=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("name", "pil_op"),
    [
        ("invert", ImageOps.invert),
        ("equalize", ImageOps.equalize),
        ("autocontrast", ImageOps.autocontrast),
        ("posterize", lambda img: ImageOps.posterize(img, 5)),
        ("solarize", lambda img: ImageOps.solarize(img, 77)),
    ],
)
def test_level_ops_match_pil(name, pil_op):
    images = random_batch()
    param = {"posterize": 5.0, "solarize": 77.0}.get(name, 0.0)
    out = I.OPS[name](images, each(param, len(images)))
    for img, got in zip(images, out, strict=True):
        pil = pil_op(Image.fromarray(img.permute(1, 2, 0).numpy()))
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        if name == "autocontrast":  # PIL's float lut sometimes maps the maximum to 254
            assert (got.int() - expected.int()).abs().max() <= 1
        else:
            assert torch.equal(got, expected)


@pytest.mark.parametrize(
    ("name", "scalar_op"),
    [
        ("contrast", TF.adjust_contrast),
        ("brightness", TF.adjust_brightness),
        ("color", TF.adjust_saturation),
        ("sharpness", TF.adjust_sharpness),
        ("posterize", lambda img, p: TF.posterize(img, int(p))),
        ("solarize", TF.solarize),
    ],
)
def test_per_image_parameters_match_torchvision_scalar_ops(name, scalar_op):
    images = random_batch()
    params = {
        "posterize": torch.tensor([4.0, 5, 6, 7]),
        "solarize": torch.tensor([1.0, 77, 128, 255]),
        "hue": torch.tensor([-0.5, -0.1, 0.2, 0.45]),
    }.get(name, torch.tensor([0.05, 0.3, 0.7, 0.95]))
    out = I.OPS[name](images, params)
    for img, p, got in zip(images, params.tolist(), out, strict=True):
        expected = scalar_op(img, p)
        # the same formula; float rounding order may move a truncated value by one level
        assert (got.int() - expected.int()).abs().max() <= 1


def test_uint8_round_trip_of_normalised_images():
    values = torch.arange(256, dtype=torch.uint8)
    images = values.view(1, 1, 16, 16).expand(2, 3, 16, 16).contiguous()
    assert torch.equal(I.to_uint8(I.from_uint8(images)), images)
    pil = Image.fromarray(images[0].permute(1, 2, 0).numpy())
    assert torch.allclose(I.from_uint8(images)[0], normalize(pil), atol=1e-6)


def test_random_intensity_keeps_the_normalised_range_and_is_per_image():
    g = torch.Generator().manual_seed(0)
    same = normalize(Image.fromarray(random_batch(1, 16, 16)[0].permute(1, 2, 0).numpy()))
    batch = same.expand(16, 3, 16, 16).contiguous()
    before = batch.clone()
    out = I.random_intensity(batch, I.AUGSEG_POLICY, generator=g)
    assert torch.equal(batch, before)  # input untouched
    low, high = (0 - IMAGENET_MEAN) / IMAGENET_STD, (1 - IMAGENET_MEAN) / IMAGENET_STD
    assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
    # the same image, 16 independent draws: many different results
    distinct = {tuple(I.to_uint8(o[None]).flatten().tolist()) for o in out}
    assert len(distinct) >= 10


def test_apply_plan_treats_each_image_alone():
    images = random_batch(n=12, h=16, w=16, seed=3)
    ops, params = I.sample_plan(12, I.IMAS_POLICY, torch.Generator().manual_seed(5))
    batched = I.apply_plan(images, ops, params, I.IMAS_POLICY)
    for i in range(12):
        alone = I.apply_plan(images[i : i + 1], ops[i : i + 1], params[i : i + 1], I.IMAS_POLICY)
        assert torch.equal(batched[i : i + 1], alone)


def test_plans_keep_the_public_ranges():
    for policy in (I.IMAS_POLICY, I.AUGSEG_POLICY):
        ops, params = I.sample_plan(3000, policy, torch.Generator().manual_seed(1))
        used = ops >= 0
        # ops fill a prefix of the slots
        assert torch.equal(used, used.cummin(dim=1).values)
        counts = used.sum(1)
        assert counts.min() == policy.min_ops and counts.max() == policy.max_ops
        for index, name in enumerate(policy.ops):
            p = params[ops == index]
            assert len(p) > 0, name
            if name == "blur":
                assert p.min() >= 0.1 and p.max() <= 2.0
            elif name in I.ENHANCE_OPS:
                lo, hi = policy.enhance_range
                assert p.min() >= lo and p.max() <= hi
            elif name == "posterize":
                assert set(p.tolist()) == {4.0, 5.0, 6.0, 7.0}
            elif name == "solarize":
                assert p.min() >= 1 and p.max() <= 255 and p.frac().eq(0).all()
            elif name == "hue":
                assert p.min() >= -0.5 and p.max() <= 0.5 and (p < 0).any() and (p > 0).any()
            else:
                assert (p == 0).all()
    assert "invert" in I.IMAS_POLICY.ops and "invert" not in I.AUGSEG_POLICY.ops
    assert len(I.IMAS_POLICY.ops) == 12 and len(I.AUGSEG_POLICY.ops) == 11


# The public samplers, transcribed: per image `random.choices(ops, k)` (uniform, with
# replacement); AugSeg's k = np.random.randint(1, 4); posterize keeps 8 - max(1, ceil(4u)) bits.


def public_plan(policy_ops: tuple, k_low: int, k_high: int, rng: random.Random):
    k = rng.randint(k_low, k_high)
    ops = rng.choices(range(len(policy_ops)), k=k)
    bits = [8 - max(1, math.ceil(4 * rng.random())) for op in ops if policy_ops[op] == "posterize"]
    return k, ops, bits


@pytest.mark.parametrize("policy", [I.IMAS_POLICY, I.AUGSEG_POLICY], ids=["imas", "augseg"])
def test_op_choice_distribution_matches_the_public_sampler(policy):
    n = 6000
    num_ops = len(policy.ops)
    ops, params = I.sample_plan(n, policy, torch.Generator().manual_seed(2024))
    rng = random.Random(2024)
    public = [public_plan(policy.ops, policy.min_ops, policy.max_ops, rng) for _ in range(n)]

    ours_ops = torch.bincount(ops[ops >= 0], minlength=num_ops).tolist()
    public_ops = np.bincount([o for _, os, _ in public for o in os], minlength=num_ops).tolist()
    assert chi_square(ours_ops, public_ops) < CHI2_999[num_ops - 1]

    posterize = policy.ops.index("posterize")
    ours_bits = torch.bincount(params[ops == posterize].long() - 4, minlength=4).tolist()
    public_bits = np.bincount([b - 4 for _, _, bs in public for b in bs], minlength=4).tolist()
    assert chi_square(ours_bits, public_bits) < CHI2_999[3]

    # with replacement: the first two ops coincide with probability 1 / len(ops)
    ours_two = ops[:, 1] >= 0
    ours_repeat = (ops[ours_two, 0] == ops[ours_two, 1]).sum().item()
    public_two = [os for _, os, _ in public if len(os) >= 2]
    public_repeat = sum(os[0] == os[1] for os in public_two)
    a = [ours_repeat, int(ours_two.sum()) - ours_repeat]
    b = [public_repeat, len(public_two) - public_repeat]
    assert chi_square(a, b) < CHI2_999[1]
    assert ours_repeat / int(ours_two.sum()) == pytest.approx(1 / num_ops, abs=0.02)

    if policy.max_ops > policy.min_ops:
        ours_k = torch.bincount((ops >= 0).sum(1) - 1, minlength=3).tolist()
        public_k = np.bincount([k - 1 for k, _, _ in public], minlength=3).tolist()
        assert chi_square(ours_k, public_k) < CHI2_999[2]


def test_policy_overrides_replace_only_what_they_name():
    assert I.policy_with(I.AUGSEG_POLICY, None, "method.intensity") == I.AUGSEG_POLICY
    assert I.policy_with(I.AUGSEG_POLICY, {"ops": None}, "method.intensity") == I.AUGSEG_POLICY
    mild = I.policy_with(
        I.AUGSEG_POLICY, {"ops": ["blur", "hue"], "num_ops": [2, 2]}, "method.intensity"
    )
    assert mild.ops == ("blur", "hue") and (mild.min_ops, mild.max_ops) == (2, 2)
    assert mild.enhance_range == I.AUGSEG_POLICY.enhance_range
    ops, params = I.sample_plan(500, mild, torch.Generator().manual_seed(0))
    assert (ops >= 0).all() and set(ops.flatten().tolist()) == {0, 1}
    ranged = I.policy_with(I.IMAS_POLICY, {"enhance_range": [0.5, 0.9]}, "method.intensity")
    ops, params = I.sample_plan(2000, ranged, torch.Generator().manual_seed(0))
    enhance = torch.isin(ops, torch.tensor([ranged.ops.index(n) for n in I.ENHANCE_OPS]))
    assert params[enhance].min() >= 0.5 and params[enhance].max() <= 0.9


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"ops": ["blur", "blurr"]}, "method.intensity.ops=['blur', 'blurr']: blurr is not an op"),
        ({"ops": []}, "method.intensity.ops=[]: empty is not an op"),
        ({"num_ops": [0, 2]}, "method.intensity.num_ops=[0, 2]: give [min, max]"),
        ({"num_ops": [3, 2]}, "method.intensity.num_ops=[3, 2]: give [min, max]"),
        ({"enhance_range": [0.9, 0.5]}, "method.intensity.enhance_range=[0.9, 0.5]: give"),
        ({"magnitude": 2}, "method.intensity.magnitude is not an intensity setting"),
    ],
)
def test_bad_policy_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError) as err:
        I.policy_with(I.AUGSEG_POLICY, overrides, "method.intensity")
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


@pytest.mark.parametrize("factor", [0.05, 0.5, 0.95, 1.6])
def test_contrast_matches_pils_enhance_with_its_rounded_mean(factor):
    """iMAS's and AugSeg's `ImageEnhance.Contrast(img).enhance(v)`: the degenerate image is the
    integer-rounded mean of the 8-bit luma."""
    from PIL import ImageEnhance

    images = random_batch()
    out = I.contrast(images, each(factor, len(images)))
    for img, got in zip(images, out, strict=True):
        pil = ImageEnhance.Contrast(Image.fromarray(img.permute(1, 2, 0).numpy())).enhance(factor)
        expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert torch.equal(got, expected)


@pytest.mark.parametrize("name", ["brightness", "color", "sharpness"])
@pytest.mark.parametrize("factor", [0.05, 0.5, 1.6])
def test_enhance_ops_match_pil(name, factor):
    """The other ImageEnhance ops of the public policies, blended in PIL's order and precision;
    color's degenerate image is PIL's own "L" conversion."""
    from PIL import ImageEnhance

    enhancer = {"brightness": ImageEnhance.Brightness, "color": ImageEnhance.Color,
                "sharpness": ImageEnhance.Sharpness}[name]  # fmt: skip
    images = random_batch()
    out = I.OPS[name](images, each(factor, len(images)))
    for img, got in zip(images, out, strict=True):
        pil = enhancer(Image.fromarray(img.permute(1, 2, 0).numpy())).enhance(factor)
        assert torch.equal(got, torch.from_numpy(np.array(pil)).permute(2, 0, 1))


def public_hue(img: Image.Image, hue_factor: float) -> Image.Image:
    """iMAS's and AugSeg's `img_aug_hue` after its draw: PIL HSV, H plus uint8(factor * 255) with
    uint8 wrap-around (a negative factor wraps, as numpy's C cast did), back to RGB."""
    h, s, v = img.convert("HSV").split()
    np_h = np.array(h, dtype=np.uint8)
    np_h = (np_h.astype(np.int64) + int(hue_factor * 255)) % 256
    return Image.merge("HSV", (Image.fromarray(np_h.astype(np.uint8), "L"), s, v)).convert("RGB")


@pytest.mark.parametrize("factor", [0.0, 0.13, 0.5, -0.07, -0.5])
def test_hue_matches_the_public_8_bit_hsv_op(factor):
    images = random_batch()
    images[0, :, 0, :3] = torch.tensor([[7, 7, 7], [255, 0, 0], [0, 0, 0]], dtype=torch.uint8).T
    out = I.hue(images, each(factor, len(images)))
    for img, got in zip(images, out, strict=True):
        expected = public_hue(Image.fromarray(img.permute(1, 2, 0).numpy()), factor)
        assert torch.equal(got, torch.from_numpy(np.array(expected)).permute(2, 0, 1))
