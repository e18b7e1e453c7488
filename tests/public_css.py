"""CSS's two losses (WangChangqi98/CSS generalframeworks/loss/loss.py, `Attention_Threshold_Loss`
and `Contrast_Loss` with `negative_index_sampler`), written out again for the parity tests, on one
process (the public all-gather of representations is the identity there). The contrastive loss
draws its anchors and negatives from torch's and numpy's global generators, as the public one."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def public_attention_threshold_loss(pred, pseudo_label, conf, threshold):
    """Per image: weight = pixels with conf >= threshold / pixels with a label (>= 0); CE with
    ignore -1, weighted per image, averaged over the pixels whose weighted CE is > 0."""
    n = pred.shape[0]
    valid = (pseudo_label >= 0).float()
    weight = conf.view(n, -1).ge(threshold).sum(-1) / valid.view(n, -1).sum(-1)
    loss = F.cross_entropy(pred, pseudo_label, reduction="none", ignore_index=-1)
    return torch.mean(torch.masked_select(weight[:, None, None] * loss, loss > 0))


def _negative_indices(counts_per_class, pixels_per_class):
    """`negative_index_sampler`: per anchor and class, that many uniform picks in the class's
    slice of the concatenated pixels."""
    out = []
    for row in counts_per_class:
        for j, k in enumerate(row):
            lo, hi = sum(pixels_per_class[:j]), sum(pixels_per_class[: j + 1])
            out += np.random.randint(low=lo, high=hi, size=int(k)).tolist()
    return out


def public_contrast_loss(
    rep, onehot, mask, prob, prototypes, queries, negatives, temp, thresh, alpha
):
    """`Contrast_Loss.forward`: updates `prototypes` in place (first sight: the class mean; then
    an EMA with alpha) and returns the loss."""
    n, d, h, w = rep.shape
    valid_all = onehot * mask
    rep = rep.permute(0, 2, 3, 1)
    all_list, hard_list, counts, protos = [], [], [], []
    for c in range(onehot.shape[1]):
        valid = valid_all[:, c]
        if valid.sum() == 0:
            continue
        hard = (prob[:, c] < thresh) * valid.bool()
        with torch.no_grad():
            mean = torch.mean(rep[valid.bool()], dim=0, keepdim=True)
            if prototypes[c].sum() == torch.tensor(0.0):
                prototypes[c] = mean
                protos.append(mean)
            else:
                prototypes[c] = alpha * prototypes[c] + (1 - alpha) * mean
                protos.append(prototypes[c].unsqueeze(0))
        all_list.append(rep[valid.bool()])
        hard_list.append(rep[hard])
        counts.append(int(valid.sum().item()))
    if len(counts) <= 1:
        return torch.tensor(0.0) + 0 * rep.sum()
    loss = torch.tensor(0.0)
    proto = torch.cat(protos)
    order = torch.arange(len(counts))
    for i in range(len(counts)):
        if len(hard_list[i]) == 0:
            continue
        anchors = hard_list[i][torch.randint(len(hard_list[i]), size=(queries,))]
        with torch.no_grad():
            ids = torch.cat((order[i:], order[:i]))
            sim = torch.cosine_similarity(proto[ids[0]].unsqueeze(0), proto[ids[1:]], dim=1)
            dist = torch.distributions.categorical.Categorical(probs=torch.softmax(sim / temp, 0))
            drawn = dist.sample(sample_shape=[queries, negatives])
            per_class = torch.stack([(drawn == c).sum(1) for c in range(len(sim))], dim=1)
            index = _negative_indices(per_class, counts[i + 1 :] + counts[:i])
            pool = torch.cat(all_list[i + 1 :] + all_list[:i])
            negative = pool[index].reshape(queries, negatives, d)
            positive = proto[i].unsqueeze(0).unsqueeze(0).repeat(queries, 1, 1)
            candidates = torch.cat((positive, negative), dim=1)
        logits = torch.cosine_similarity(anchors.unsqueeze(1), candidates, dim=2)
        loss = loss + F.cross_entropy(logits / temp, torch.zeros(queries).long())
    return loss / len(counts)


# ReCo's unlabeled augmentation as CSS runs it (`transform_3` of generalframeworks/dataset_helpers/
# VOC.py on PIL images), with its random draws passed in: the scale, RandomCrop's (i, j), then
# the jitter's order and factors, the blur's sigma and the flip (None = not applied).


def public_rescale_crop(image, labels, logits, crop, scale_ratio, i, j):
    """PIL image, label and confidence images -> the rescaled, padded and cropped three."""
    from PIL import Image
    from torchvision.transforms import functional as TF

    raw_w, raw_h = image.size
    size = (int(raw_h * scale_ratio), int(raw_w * scale_ratio))
    image = TF.resize(image, size, Image.BILINEAR)
    labels = TF.resize(labels, size, Image.NEAREST)
    logits = TF.resize(logits, size, Image.NEAREST)
    if crop[0] > size[0] or crop[1] > size[1]:
        right, bottom = max(crop[1] - size[1], 0), max(crop[0] - size[0], 0)
        image = TF.pad(image, padding=(0, 0, right, bottom), padding_mode="reflect")
        labels = TF.pad(labels, padding=(0, 0, right, bottom), fill=255, padding_mode="constant")
        logits = TF.pad(logits, padding=(0, 0, right, bottom), fill=0, padding_mode="constant")
    return tuple(TF.crop(x, i, j, crop[0], crop[1]) for x in (image, labels, logits))


def public_jitter_blur_flip(image, labels, order, factors, sigma, flip):
    """The `augmentation=True` branch: ColorJitter (its ops in `order`, or None), PIL's Gaussian
    blur (sigma or None), the horizontal flip of image and labels."""
    from PIL import ImageFilter
    from torchvision.transforms import functional as TF

    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    if order is not None:
        for k in order:
            image = ops[k](image, factors[k])
    if sigma is not None:
        image = image.filter(ImageFilter.GaussianBlur(radius=sigma))
    if flip:
        image, labels = TF.hflip(image), TF.hflip(labels)
    return image, labels


# The datasets' `transform` (generalframeworks/dataset_helpers/VOC.py and Cityscapes.py,
# logits=None): augmentation=True for the labeled images, scale_size (1.0, 1.0) and
# augmentation=False for the unlabeled ones; with its own random draws: Python's `random` for the
# scale and the sigma, torch's global generator for the crop, the three coin flips and
# ColorJitter's order and factors.


def public_labeled_transform(image, label, crop_size, scale_size, augmentation=True):
    """PIL image and label -> the normalised image tensor (3, h, w) and the label (h, w), -1 for
    ignored pixels."""
    import random

    from PIL import Image
    from torchvision import transforms
    from torchvision.transforms import functional as TF

    raw_w, raw_h = image.size
    ratio = random.uniform(scale_size[0], scale_size[1])
    size = (int(raw_h * ratio), int(raw_w * ratio))
    image = TF.resize(image, size, Image.BILINEAR)
    label = TF.resize(label, size, Image.NEAREST)
    if crop_size[0] > size[0] or crop_size[1] > size[1]:
        pad = (0, 0, max(crop_size[1] - size[1], 0), max(crop_size[0] - size[0], 0))
        image = TF.pad(image, padding=pad, padding_mode="reflect")
        label = TF.pad(label, padding=pad, fill=255, padding_mode="constant")
    i, j, h, w = transforms.RandomCrop.get_params(image, output_size=crop_size)
    image, label = TF.crop(image, i, j, h, w), TF.crop(label, i, j, h, w)
    if augmentation:
        image, label = _jitter_blur_flip(image, label)
    image = TF.normalize(TF.to_tensor(image), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    label = (TF.to_tensor(label) * 255).long()[0]
    label[label == 255] = -1
    return image, label


def _jitter_blur_flip(image, label):
    import random

    from PIL import ImageFilter
    from torchvision import transforms
    from torchvision.transforms import functional as TF

    if torch.rand(1) > 0.2:
        jitter = transforms.ColorJitter((0.75, 1.25), (0.75, 1.25), (0.75, 1.25), (-0.25, 0.25))
        image = jitter(image)
    if torch.rand(1) > 0.5:
        image = image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.15, 1.15)))
    if torch.rand(1) > 0.5:
        image, label = TF.hflip(image), TF.hflip(label)
    return image, label


# ReCo's mixing as CSS runs it on several GPUs (`generate_cut_gather_3` of VOC.py, mode cutmix),
# the all-gather written out as the list of every rank's batch and the masks passed in.


def public_cut_gather(batches, rank, masks):
    """`batches`: per rank a tuple (image, label1, label2, logits1, logits2) of the same batch
    size; `masks`: (world * n, H, W), 1 where image i keeps its own pixel. Returns the rank's
    share of the mixed, gathered batch."""
    gathered = [torch.cat(parts) for parts in zip(*batches, strict=True)]
    n = batches[0][0].shape[0]
    mixed = [[] for _ in gathered]
    for i in range(gathered[0].shape[0]):
        mask = masks[i]
        for out, x in zip(mixed, gathered, strict=True):
            keep = mask if x.dim() == 3 else mask.unsqueeze(0)
            out.append((x[i] * keep + x[(i + 1) % n] * (1 - keep)).unsqueeze(0))
    own = slice(rank * n, (rank + 1) * n)
    return [torch.cat(out)[own] for out in mixed]
