"""Predicting one validation image: whole image, centre crop, sliding window, or resized."""

import torch
import torch.nn.functional as F

MODES = ("original", "center_crop", "sliding_window", "resize")
# Windows per forward: a 1024x2048 Cityscapes image has 8 windows of 801 (2 rows of 4).
WINDOW_BATCH = 8


def center_crop(image: torch.Tensor, mask: torch.Tensor | None, crop_size: int):
    """Crop the centre crop_size x crop_size region (clamped to the image) of image and mask.

    Works on (..., H, W) tensors, so the caller crops the mask exactly as predict crops the image.
    """
    h, w = image.shape[-2:]
    ch, cw = min(crop_size, h), min(crop_size, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    image = image[..., top : top + ch, left : left + cw]
    if mask is not None:
        mask = mask[..., top : top + ch, left : left + cw]
    return image, mask


def window_starts(size: int, crop_size: int, stride: int, border: str) -> list[tuple[int, int]]:
    """(start, end) of the windows along one side.

    border="align": windows of crop_size (or the side, if shorter), the last one ending at the
    border. border="truncate": the public UniMatch code, a window starts every stride while
    start < size and is cut at the border (so the last windows are narrower, and an extra
    window runs even when the first one already covers the side).
    """
    if border not in ("align", "truncate"):
        raise ValueError(f"border must be 'align' or 'truncate', not {border!r}")
    if border == "truncate":
        return [(s, min(s + crop_size, size)) for s in range(0, size, stride)]
    window = min(crop_size, size)
    starts = [*range(0, size - window, stride), size - window]
    return [(s, s + window) for s in starts]


def sliding_window(
    model,
    image,
    crop_size: int,
    num_classes: int,
    border: str = "align",
    window_batch: int = WINDOW_BATCH,
):
    """Softmax sums (N, C, H, W) over the windows of image (N, 3, H, W).

    Windows of one shape (all of them in `align` mode; interior, right, bottom and corner ones
    in `truncate` mode) go through the model up to `window_batch` at a time: each window's
    prediction is the same as alone, the batch only fills the accelerator.
    """
    if window_batch < 1:
        raise ValueError(f"window_batch must be at least 1, not {window_batch}")
    stride = int(2 / 3 * crop_size)
    h, w = image.shape[-2:]
    n = image.shape[0]
    # Accumulate in float32 whatever precision the model runs in.
    total = image.new_zeros((n, num_classes, h, w), dtype=torch.float32)
    by_shape: dict[tuple[int, int], list[tuple[slice, slice]]] = {}
    for top, bottom in window_starts(h, crop_size, stride, border):
        for left, right in window_starts(w, crop_size, stride, border):
            window = (slice(top, bottom), slice(left, right))
            by_shape.setdefault((bottom - top, right - left), []).append(window)
    for windows in by_shape.values():
        for first in range(0, len(windows), window_batch):
            chunk = windows[first : first + window_batch]
            # window-major: rows k*n .. (k+1)*n - 1 are window k of every image
            crops = torch.cat([image[..., rows, cols] for rows, cols in chunk])
            probs = model(crops).float().softmax(dim=1)
            for k, (rows, cols) in enumerate(chunk):
                total[..., rows, cols] += probs[k * n : (k + 1) * n]
    return total


def resized(model, image: torch.Tensor, scale) -> torch.Tensor:
    """Softmax (N, C, H, W) of the model on `image` resized to fit `scale` (W, H), aspect kept,
    its logits resized back to H x W: mmseg's test pipeline of the UDA configs
    (Resize(img_scale=(1024, 512), keep_ratio=True), `whole` inference, `rescale=True`: the
    logits bilinearly to the original size, compared with the full-size labels). Resizing the
    normalised image is resizing the 8-bit one up to its rounding (the map is per-channel affine)."""
    from semiseg.data.transforms import rescaled_size

    h, w = image.shape[-2:]
    ow, oh = rescaled_size(w, h, scale)
    if (oh, ow) != (h, w):
        image = F.interpolate(image, size=(oh, ow), mode="bilinear", align_corners=False)
    logits = model(image).float()
    if logits.shape[-2:] != (h, w):
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
    return logits.softmax(dim=1)


@torch.no_grad()
def predict(
    model,
    image: torch.Tensor,
    mode: str,
    crop_size: int,
    num_classes: int,
    border: str = "align",
    window_batch: int = WINDOW_BATCH,
    resize=None,
) -> torch.Tensor:
    """Class probabilities (N, C, H', W') for image (N, 3, H, W); the model is in eval mode.

    For sliding_window they are softmax sums over the windows: only their argmax is meant.
    For center_crop, H' x W' is the crop: crop the mask with `center_crop` too. `border` and
    `window_batch` (windows per forward) only matter for sliding_window (see `window_starts`).
    For resize, `resize` is the (W, H) the image is fitted into (see `resized`).
    """
    if mode == "original":
        return model(image).float().softmax(dim=1)
    if mode == "center_crop":
        return model(center_crop(image, None, crop_size)[0]).float().softmax(dim=1)
    if mode == "sliding_window":
        return sliding_window(model, image, crop_size, num_classes, border, window_batch)
    if mode == "resize":
        if not resize or len(resize) != 2:
            raise ValueError(f"eval.mode=resize needs eval.resize=[width, height], not {resize}")
        return resized(model, image, tuple(int(v) for v in resize))
    raise ValueError(f"unknown eval mode {mode!r}: choose one of {', '.join(MODES)}")
