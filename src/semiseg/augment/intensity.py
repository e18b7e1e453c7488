"""The random intensity augmentations of iMAS and AugSeg, on image batches inside the training step.

The public code runs them in DataLoader workers on the weak view as an 8-bit PIL image
(imas/dataset/augmentations.py and augseg/dataset/augs_TIBA.py, `strong_img_aug`): per image,
`random.choices` draws the ops WITH replacement from the list (uniformly), each with its own
uniform magnitude. Here the same ops run on a whole batch (any device): the batch is turned back
into 8-bit images (`to_uint8`), since posterize, solarize, equalize and autocontrast are defined on
the 256 levels, and the torchvision tensor kernels used follow PIL's formulas for uint8.

What the public samplers draw (u ~ U(0, 1) per op, times `strength`):
- iMAS: 2 ops of 12 (identity, autocontrast, equalize, invert, blur, contrast, brightness, color,
  sharpness, posterize, solarize, hue); `strength` 0.999: the "modifier" meant to carry the
  hardness is a constant in the dataset (`modifer = 0.999`, the hardness lookup commented out),
  so hardness does not change the ops, their number or magnitudes; it only blends the views in
  the step (`hardness.blend_views`). Enhance factors in [0.1, 0.95].
- AugSeg: k ~ U{1, 2, 3} ops of 11 (the same without invert), enhance factors in [0.05, 0.95].
- Both: blur sigma 0.1 + 1.9u; enhance factor hi - (hi - lo)u (never above 1: they only weaken);
  posterize to 8 - max(1, ceil(4u)) bits (4..7); solarize above threshold 256 - max(1, ceil(255u))
  (1..255; iMAS clamps differently only at u = 0); hue shift +-0.5u, the sign a fair coin.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from semiseg.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from semiseg.errors import ConfigError


def to_uint8(images: Tensor) -> Tensor:
    """ImageNet-normalised float (N, 3, H, W) -> the 8-bit image it came from."""
    mean, std = IMAGENET_MEAN.to(images.device), IMAGENET_STD.to(images.device)
    return (images * std + mean).mul_(255).round_().clamp_(0, 255).to(torch.uint8)


def from_uint8(images: Tensor) -> Tensor:
    """8-bit (N, 3, H, W) -> ImageNet-normalised float32, as the data pipeline's `normalize`."""
    mean, std = IMAGENET_MEAN.to(images.device), IMAGENET_STD.to(images.device)
    return images.float().div_(255).sub_(mean).div_(std)


# Each op maps a uint8 batch (n, 3, H, W) and one parameter per image (n,) to a new uint8 batch.


def _per_image(values: Tensor, images: Tensor) -> Tensor:
    return values.to(images.device, torch.float32).view(-1, 1, 1, 1)


def _blend(images: Tensor, degenerate: Tensor, factor: Tensor) -> Tensor:
    # PIL's ImageEnhance (Image.blend): degenerate + factor * (image - degenerate) in float32,
    # in that order, truncated to 8 bits
    f = _per_image(factor, images)
    return (degenerate + f * (images.float() - degenerate)).clamp_(0, 255).to(torch.uint8)


def identity(images: Tensor, _: Tensor) -> Tensor:
    return images.clone()


def autocontrast(images: Tensor, _: Tensor) -> Tensor:
    """Stretch each channel to 0..255: PIL's (x - lo) * 255 / (hi - lo), truncated, computed on
    integers (PIL's float lookup table and TF.autocontrast's float division sometimes map the
    maximum to 254)."""
    x = images.to(torch.int32)
    lo = x.amin(dim=(2, 3), keepdim=True)
    span = x.amax(dim=(2, 3), keepdim=True) - lo
    stretched = ((x - lo) * 255).div(span.clamp(min=1), rounding_mode="floor")
    return torch.where(span > 0, stretched, x).to(torch.uint8)


def equalize(images: Tensor, _: Tensor) -> Tensor:
    return TF.equalize(images)


def invert(images: Tensor, _: Tensor) -> Tensor:
    return TF.invert(images)


def _pil_luma(images: Tensor) -> Tensor:
    # PIL's convert("L"): (19595 R + 38470 G + 7471 B + 2^15) >> 16, on integers
    x = images.to(torch.int64)
    return (x[:, 0] * 19595 + x[:, 1] * 38470 + x[:, 2] * 7471 + 0x8000) >> 16


def contrast(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with the image's mean luma as PIL's ImageEnhance.Contrast (the public iMAS and AugSeg
    op): the mean of its 8-bit "L" image rounded to an integer, one factor per image."""
    mean = _pil_luma(images).double().mean(dim=(1, 2)).add(0.5).floor()
    return _blend(images, mean.view(-1, 1, 1, 1).float(), factor)


def brightness(images: Tensor, factor: Tensor) -> Tensor:
    return _blend(images, torch.zeros((), device=images.device), factor)


def color(images: Tensor, factor: Tensor) -> Tensor:
    """Saturation: blend with the luma image, PIL's 8-bit "L" conversion (ImageEnhance.Color)."""
    return _blend(images, _pil_luma(images).unsqueeze(1).float(), factor)


def sharpness(images: Tensor, factor: Tensor) -> Tensor:
    """Blend with PIL's SMOOTH-filtered image, border pixels kept (as TF.adjust_sharpness)."""
    return _blend(images, TF.adjust_sharpness(images, 0.0).float(), factor)


def posterize(images: Tensor, bits: Tensor) -> Tensor:
    """Keep the `bits` high bits of every value (PIL's ImageOps.posterize)."""
    drop = 8 - bits.to(images.device, torch.long).view(-1, 1, 1, 1)
    mask = (255 - ((1 << drop) - 1)).to(torch.uint8)
    return images & mask


def solarize(images: Tensor, threshold: Tensor) -> Tensor:
    """Invert the values >= threshold (PIL's ImageOps.solarize)."""
    return torch.where(images >= _per_image(threshold, images), 255 - images, images)


def pil_box_radius(sigma: Tensor, passes: int = 3) -> Tensor:
    """The extended box radius PIL's GaussianBlur(sigma) uses for each of its `passes` box passes
    (BoxBlur.c `_gaussian_blur_radius`, Gwosdek et al. 2011), in its float32 and double steps:
    the boxes' variance sums to sigma^2."""
    s = sigma.detach().cpu().to(torch.float32)  # PIL parses the radius as a C float
    sigma2 = s * s / passes
    length = torch.sqrt(12.0 * sigma2.double() + 1.0).float()
    whole = torch.floor((length.double() - 1.0) / 2.0).float()
    frac = (2 * whole + 1) * (whole * (whole + 1) - 3 * sigma2)
    frac = frac / (6 * (sigma2 - (whole + 1) * (whole + 1)))
    return whole + frac


def _box_weights(radius: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """PIL's 24-bit fixed-point weights of a box of float radius: `ww` for the 2r + 1 inner taps,
    `fw` for the two taps at distance r + 1 (r its integer part)."""
    whole = radius.long()
    inner = (16777216.0 / (radius * 2 + 1)).long()  # float division, truncated to UINT32
    far = (16777216 - (whole * 2 + 1) * inner) // 2
    return whole, inner, far


def _box_pass(x: Tensor, whole: Tensor, inner: Tensor, far: Tensor) -> Tensor:
    """One horizontal box pass of int64 rows (n, c, h, w), each image with its own box: edge
    pixels repeated beyond the border, the sum rounded to 8 bits as PIL (+2^23, >> 24)."""
    w = x.shape[-1]
    reach = int(whole.max()) + 1
    index = torch.arange(-reach, w + reach, device=x.device).clamp_(0, w - 1)
    padded = x.index_select(-1, index)
    whole, inner, far = (v.to(x.device).view(-1, 1, 1, 1) for v in (whole, inner, far))
    total = torch.zeros_like(x)
    for offset in range(-reach, reach + 1):
        weight = torch.where(abs(offset) <= whole, inner, 0)
        weight = torch.where(abs(offset) == whole + 1, far, weight)
        total += weight * padded[..., reach + offset : reach + offset + w]
    return (total + (1 << 23)) >> 24


def blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Gaussian blur, one sigma per image, as PIL's ImageFilter.GaussianBlur (the op of the public
    iMAS, AugSeg and UniMatch code): three extended box passes along the rows, each rounded to
    8 bits, then three along the columns, edge pixels repeated; every weight and rounding of
    PIL's fixed-point code kept, so the result equals PIL's. sigma 0 leaves the image as it is."""
    radius = pil_box_radius(sigma)
    whole, inner, far = _box_weights(radius)
    x = images.to(torch.int64)
    for _ in range(3):
        x = _box_pass(x, whole, inner, far)
    x = x.transpose(-1, -2)
    for _ in range(3):
        x = _box_pass(x, whole, inner, far)
    out = x.transpose(-1, -2).to(torch.uint8)
    # PIL skips a direction whose box radius is 0 (sigma 0, or so small it underflows)
    return torch.where((radius == 0).to(images.device).view(-1, 1, 1, 1), images, out)


def _f32(values: Tensor) -> Tensor:
    # a value PIL's C code stores in a float variable: rounded to float32, computed on in double
    return values.float().double()


def _pil_rgb_to_hsv(images: Tensor) -> Tensor:
    """PIL's convert("HSV") of 8-bit RGB (Convert.c, colorsys's formulas): V = max; S = (max -
    min) / max and H = the hue in turns, each times 255 and truncated; the float and double steps
    of its C code kept, so every value equals PIL's."""
    x = images.double()
    r, g, b = x.unbind(1)
    top, bottom = x.amax(1), x.amin(1)
    span = (top - bottom).clamp(min=1)
    sat = _f32(span / top.clamp(min=1))
    rc, gc, bc = (_f32((top - c) / span) for c in (r, g, b))
    h = torch.where(
        r == top, _f32(bc - gc), torch.where(g == top, _f32(2.0 + rc - bc), _f32(4.0 + gc - rc))
    )
    h = _f32(torch.fmod(h / 6.0 + 1.0, 1.0))
    grey = top == bottom
    hue_8 = torch.where(grey, 0.0, (h * 255.0).trunc().clamp(0, 255))
    sat_8 = torch.where(grey, 0.0, (sat * 255.0).trunc().clamp(0, 255))
    return torch.stack((hue_8, sat_8, top), 1).to(torch.int64)


def _pil_hsv_to_rgb(hsv: Tensor) -> Tensor:
    """PIL's HSV -> RGB: sector i = floor(6 H / 255), p, q, t rounded half away from zero."""
    h, s, v = hsv.double().unbind(1)
    i = (h * 6.0 / 255.0).floor()
    f = _f32(h * 6.0 / 255.0 - i)
    fs = _f32(s / 255.0)

    def rounded(values: Tensor) -> Tensor:
        return (values + 0.5).floor().clamp(0, 255)  # values >= 0: C's round

    p = rounded(v * (1.0 - fs))
    q = rounded(v * (1.0 - _f32(fs * f)))
    t = rounded(v * (1.0 - fs * (1.0 - f)))
    sector = i.long() % 6
    table = torch.stack(
        [
            torch.stack(c, 1)
            for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))
        ],
        0,
    )  # (6, N, 3, H, W)
    rgb = table.gather(0, sector.unsqueeze(0).unsqueeze(2).expand(1, -1, 3, -1, -1))[0]
    grey = (s == 0).unsqueeze(1)
    return torch.where(grey, v.unsqueeze(1), rgb).to(torch.uint8)


def hue(images: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue by `shift` turns (in [-0.5, 0.5]) as the public iMAS/AugSeg op: PIL's 8-bit
    HSV, the H channel plus trunc(shift * 255) modulo 256 (their uint8 addition), back to RGB."""
    hsv = _pil_rgb_to_hsv(images)
    step = (shift.to(images.device, torch.float32) * 255.0).trunc().long().view(-1, 1, 1)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + step, 256)
    return _pil_hsv_to_rgb(hsv)


OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "identity": identity,
    "autocontrast": autocontrast,
    "equalize": equalize,
    "invert": invert,
    "blur": blur,
    "contrast": contrast,
    "brightness": brightness,
    "color": color,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "hue": hue,
}
ENHANCE_OPS = ("contrast", "brightness", "color", "sharpness")


@dataclass(frozen=True)
class IntensityPolicy:
    """Which ops, how many per image (uniform in [min_ops, max_ops]) and how strong."""

    ops: tuple[str, ...]
    min_ops: int
    max_ops: int
    enhance_range: tuple[float, float]
    strength: float = 1.0


IMAS_POLICY = IntensityPolicy(tuple(OPS), 2, 2, (0.1, 0.95), strength=0.999)
AUGSEG_POLICY = IntensityPolicy(tuple(op for op in OPS if op != "invert"), 1, 3, (0.05, 0.95))


def policy_with(base: IntensityPolicy, overrides: dict | None, key: str) -> IntensityPolicy:
    """`base` with the config's `ops`, `num_ops` ([min, max]) and `enhance_range` where given
    (null keeps the paper's); `key` names the config entry in errors."""
    overrides = {k: v for k, v in dict(overrides or {}).items() if v is not None}
    unknown = set(overrides) - {"ops", "num_ops", "enhance_range"}
    if unknown:
        raise ConfigError(
            f"{key}.{sorted(unknown)[0]} is not an intensity setting: use ops, num_ops, enhance_range"
        )
    changes = {}
    if "ops" in overrides:
        ops = tuple(overrides["ops"])
        bad = [op for op in ops if op not in OPS]
        if bad or not ops:
            raise ConfigError(
                f"{key}.ops={list(ops)}: {bad[0] if bad else 'empty'} is not an op; "
                f"choose from {', '.join(OPS)}"
            )
        changes["ops"] = ops
    if "num_ops" in overrides:
        lo, hi = (int(v) for v in overrides["num_ops"])
        if not 1 <= lo <= hi:
            raise ConfigError(f"{key}.num_ops=[{lo}, {hi}]: give [min, max] with 1 <= min <= max")
        changes["min_ops"], changes["max_ops"] = lo, hi
    if "enhance_range" in overrides:
        lo, hi = (float(v) for v in overrides["enhance_range"])
        if not 0 <= lo <= hi:
            raise ConfigError(
                f"{key}.enhance_range=[{lo}, {hi}]: give [low, high] with 0 <= low <= high"
            )
        changes["enhance_range"] = (lo, hi)
    return replace(base, **changes)


def op_parameter(name: str, u: Tensor, coin: Tensor, policy: IntensityPolicy) -> Tensor:
    """The op's parameter from its magnitude u in [0, strength) (see the module docstring)."""
    if name == "blur":
        return 0.1 + 1.9 * u
    if name in ENHANCE_OPS:
        lo, hi = policy.enhance_range
        return hi - (hi - lo) * u
    if name == "posterize":
        return 8 - torch.ceil(4 * u).clamp(min=1)
    if name == "solarize":
        return 256 - torch.ceil(255 * u).clamp(min=1)
    if name == "hue":
        return torch.where(coin < 0.5, -0.5 * u, 0.5 * u)
    return torch.zeros_like(u)


def sample_plan(
    n: int, policy: IntensityPolicy, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Per image and slot: the op (an index into policy.ops, -1 = no op) and its parameter.

    Drawn on the CPU (n x max_ops numbers), so a seeded generator gives the same plan on any
    device. Ops are drawn uniformly with replacement, as `random.choices` in the public code.
    """
    slots = policy.max_ops
    num_ops = torch.randint(policy.min_ops, slots + 1, (n, 1), generator=generator)
    ops = torch.randint(len(policy.ops), (n, slots), generator=generator)
    ops = ops.masked_fill(torch.arange(slots) >= num_ops, -1)
    u = torch.rand(n, slots, generator=generator) * policy.strength
    coin = torch.rand(n, slots, generator=generator)
    params = torch.zeros(n, slots)
    for index, name in enumerate(policy.ops):
        chosen = ops == index
        params[chosen] = op_parameter(name, u[chosen], coin[chosen], policy)
    return ops, params


def apply_plan(images: Tensor, ops: Tensor, params: Tensor, policy: IntensityPolicy) -> Tensor:
    """Run each image's ops in slot order on a uint8 batch; returns a new batch.

    Loops over slots and op kinds only: each op runs once per slot on the images that drew it.
    """
    out = images.clone()
    for slot in range(ops.shape[1]):
        for index, name in enumerate(policy.ops):
            chosen = (ops[:, slot] == index).nonzero().flatten()
            if len(chosen):
                picked = chosen.to(images.device)
                out[picked] = OPS[name](out[picked], params[chosen, slot])
    return out


def rgb_images(images: Tensor) -> Tensor:
    """A batch whose items stack k RGB images on the channels, (N, 3k, H, W), as the batch of
    those N k RGB images (N k, 3, H, W): a change-detection pair (A, B; k = 2) is two images,
    each with its own random draw, as the public code jitters them independently."""
    n, c, h, w = images.shape
    if c % 3:
        raise ValueError(
            f"intensity ops take RGB images (3 channels, or stacks of them), not {c} channels"
        )
    return images.reshape(n * (c // 3), 3, h, w)


def random_intensity(
    images: Tensor, policy: IntensityPolicy, generator: torch.Generator | None = None
) -> Tensor:
    """The strong view of an ImageNet-normalised batch: new ops and magnitudes for every image
    (every image of a stacked pair, see `rgb_images`)."""
    flat = rgb_images(images)
    ops, params = sample_plan(flat.shape[0], policy, generator)
    return from_uint8(apply_plan(to_uint8(flat), ops, params, policy)).reshape(images.shape)
