"""Transcriptions of the public UDA code. The networks, with functional ops on state dicts of
the public names: the Mix Transformer (usr922/FST mmseg/models/backbones/mix_transformer.py),
the DAFormer head (lhoyer/DAFormer daformer_head.py with sep_aspp_head.py, segformer_head.py's
MLP, decode_head.py's cls_seg; the sepaspp config), the DLV2 head (dlv2_head.py), the tensor
names of mmseg's ResNetV1c (mmseg/models/backbones/resnet.py); and RandomCrop's cat_max_ratio
rule (mmseg/datasets/pipelines/transforms.py). The reference of tests/models/test_uda_networks.py
and tests/data/test_uda_pipeline.py.
"""

import torch
import torch.nn.functional as F

# mit_b0's architecture as the public mit_b0 class sets it.
MIT_B0 = {"dims": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "heads": [1, 2, 5, 8]}
SR_RATIOS = [8, 4, 2, 1]


def public_mit_names(depths, sr_ratios=SR_RATIOS) -> set[str]:
    """The parameter names of the public MixVisionTransformer (and of mmseg's mit_b*.pth, which
    also holds the ImageNet `head`)."""
    names = set()
    for s in range(1, 5):
        for t in ("proj.weight", "proj.bias", "norm.weight", "norm.bias"):
            names.add(f"patch_embed{s}.{t}")
        for b in range(depths[s - 1]):
            p = f"block{s}.{b}"
            parts = ["norm1", "attn.q", "attn.kv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"]
            parts += ["mlp.dwconv.dwconv"]
            if sr_ratios[s - 1] > 1:
                parts += ["attn.sr", "attn.norm"]
            for part in parts:
                names |= {f"{p}.{part}.weight", f"{p}.{part}.bias"}
        names |= {f"norm{s}.weight", f"norm{s}.bias"}
    return names


def _ln(x, sd, name, eps):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=eps)


def _linear(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def public_mit(sd, x, dims, depths, heads, sr_ratios=SR_RATIOS):
    """MixVisionTransformer.forward_features in eval mode: the four stage outputs."""
    outs = []
    for s in range(1, 5):
        kernel, stride = (7, 4) if s == 1 else (3, 2)
        x = F.conv2d(
            x, sd[f"patch_embed{s}.proj.weight"], sd[f"patch_embed{s}.proj.bias"],
            stride=stride, padding=kernel // 2,
        )  # fmt: skip
        n, c, h, w = x.shape
        x = _ln(x.flatten(2).transpose(1, 2), sd, f"patch_embed{s}.norm", 1e-5)
        nh, sr = heads[s - 1], sr_ratios[s - 1]
        for b in range(depths[s - 1]):
            p = f"block{s}.{b}"
            # Attention
            y = _ln(x, sd, f"{p}.norm1", 1e-6)
            q = _linear(y, sd, f"{p}.attn.q").reshape(n, -1, nh, c // nh).permute(0, 2, 1, 3)
            if sr > 1:
                y_ = y.permute(0, 2, 1).reshape(n, c, h, w)
                y_ = F.conv2d(y_, sd[f"{p}.attn.sr.weight"], sd[f"{p}.attn.sr.bias"], stride=sr)
                y_ = _ln(y_.reshape(n, c, -1).permute(0, 2, 1), sd, f"{p}.attn.norm", 1e-5)
            else:
                y_ = y
            kv = _linear(y_, sd, f"{p}.attn.kv").reshape(n, -1, 2, nh, c // nh)
            k, v = kv.permute(2, 0, 3, 1, 4)
            attn = ((q @ k.transpose(-2, -1)) * (c // nh) ** -0.5).softmax(-1)
            y = (attn @ v).transpose(1, 2).reshape(n, -1, c)
            x = x + _linear(y, sd, f"{p}.attn.proj")
            # Mix-FFN: fc1, depthwise 3x3 on the grid, GELU, fc2
            y = _linear(_ln(x, sd, f"{p}.norm2", 1e-6), sd, f"{p}.mlp.fc1")
            hidden = y.shape[-1]
            y = y.transpose(1, 2).reshape(n, hidden, h, w)
            y = F.conv2d(
                y, sd[f"{p}.mlp.dwconv.dwconv.weight"], sd[f"{p}.mlp.dwconv.dwconv.bias"],
                padding=1, groups=hidden,
            )  # fmt: skip
            y = F.gelu(y.flatten(2).transpose(1, 2))
            x = x + _linear(y, sd, f"{p}.mlp.fc2")
        x = _ln(x, sd, f"norm{s}", 1e-6)
        x = x.reshape(n, h, w, -1).permute(0, 3, 1, 2)
        outs.append(x)
    return outs


def _conv_module(x, sd, name, dilation=1, groups=1):
    """mmcv ConvModule (conv without bias, BN in eval mode, ReLU)."""
    weight = sd[f"{name}.conv.weight"]
    pad = dilation * (weight.shape[-1] // 2)
    x = F.conv2d(x, weight, None, padding=pad, dilation=dilation, groups=groups)
    x = F.batch_norm(
        x, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"],
        sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"], False, 0.0, 1e-5,
    )  # fmt: skip
    return F.relu(x)


def public_daformer_head(sd, features, dilations=(1, 6, 12, 18)):
    """DAFormerHead.forward (eval mode) on the four features, `sd` the head's tensors."""
    n = features[-1].shape[0]
    os_size = features[0].shape[2:]
    embedded = []
    for i, f in enumerate(features):
        e = _linear(f.flatten(2).transpose(1, 2), sd, f"embed_layers.{i}.proj")
        e = e.permute(0, 2, 1).reshape(n, -1, f.shape[2], f.shape[3])
        if e.shape[2:] != os_size:
            e = F.interpolate(e, size=os_size, mode="bilinear", align_corners=False)
        embedded.append(e)
    x = torch.cat(embedded, dim=1)
    outs = []
    for i, d in enumerate(dilations):
        name = f"fuse_layer.aspp_modules.{i}"
        if d == 1:
            outs.append(_conv_module(x, sd, name))
        else:
            y = _conv_module(x, sd, f"{name}.depthwise_conv", dilation=d, groups=x.shape[1])
            outs.append(_conv_module(y, sd, f"{name}.pointwise_conv"))
    x = _conv_module(torch.cat(outs, dim=1), sd, "fuse_layer.bottleneck")
    return F.conv2d(x, sd["conv_seg.weight"], sd["conv_seg.bias"])  # dropout: eval


def public_dlv2_head(sd, x, dilations=(6, 12)):
    """DLV2Head.forward: the per-dilation 3x3 convs (with bias) summed."""
    out = None
    for i, d in enumerate(dilations):
        y = F.conv2d(
            x, sd[f"aspp_modules.{i}.conv.weight"], sd[f"aspp_modules.{i}.conv.bias"],
            padding=d, dilation=d,
        )  # fmt: skip
        out = y if out is None else out + y
    return out


def public_resnet_v1c_names(blocks=(3, 4, 23, 3)) -> set[str]:
    """The tensor names of mmseg's ResNetV1c (norm layers with their running statistics)."""

    def bn(p):
        return {f"{p}.{t}" for t in ("weight", "bias", "running_mean", "running_var")}

    names = {"stem.0.weight", "stem.3.weight", "stem.6.weight"}
    names |= bn("stem.1") | bn("stem.4") | bn("stem.7")
    for s, count in enumerate(blocks, start=1):
        for b in range(count):
            p = f"layer{s}.{b}"
            for i in (1, 2, 3):
                names |= {f"{p}.conv{i}.weight"} | bn(f"{p}.bn{i}")
            if b == 0:
                names |= {f"{p}.downsample.0.weight"} | bn(f"{p}.downsample.1")
    return names


def public_random_crop(seg, crop_size, cat_max_ratio, randint, ignore_index=255):
    """mmseg RandomCrop.__call__'s choice of the crop box (mmseg/datasets/pipelines/
    transforms.py of usr922/FST) on a (H, W) label array; `randint(lo, hi_exclusive)` stands
    for np.random.randint. Returns (y1, y2, x1, x2)."""
    import numpy as np

    def get_crop_bbox():
        margin_h = max(seg.shape[0] - crop_size, 0)
        margin_w = max(seg.shape[1] - crop_size, 0)
        offset_h = randint(0, margin_h + 1)
        offset_w = randint(0, margin_w + 1)
        return offset_h, offset_h + crop_size, offset_w, offset_w + crop_size

    crop_bbox = get_crop_bbox()
    if cat_max_ratio < 1.0:
        for _ in range(10):
            y1, y2, x1, x2 = crop_bbox
            labels, cnt = np.unique(seg[y1:y2, x1:x2], return_counts=True)
            cnt = cnt[labels != ignore_index]
            if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < cat_max_ratio:
                break
            crop_bbox = get_crop_bbox()
    return crop_bbox
