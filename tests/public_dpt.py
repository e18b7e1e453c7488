"""A transcription of the public UniMatch V2 forward (model/backbone/dinov2.py, dinov2_layers/,
model/semseg/dpt.py, model/util/blocks.py) and of the Complementary Dropout sampling, written
with functional ops on a state dict of the public names: the reference the DPT model and the
unimatch_v2 method are tested against (tests/models/test_dpt.py, tests/methods/)."""

import math

import torch
import torch.nn.functional as F

# The public forward written out with functional ops on a state dict of the public names: the
# public attention (q * scale @ k^T, softmax, @ v), the positional embedding resized with
# scale_factor=((rows + 0.1) / sqrt(N), (cols + 0.1) / sqrt(N)) unless the grid is the
# pretrained square, LayerScale, the final norm on each tapped output, the class token dropped;
# then DPTHead.forward and DPT.forward's final resize to (h // 14 * 14, w // 14 * 14).


def _ln(x, sd, name):
    return F.layer_norm(x, (x.shape[-1],), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _lin(x, sd, name):
    return F.linear(x, sd[f"{name}.weight"], sd[f"{name}.bias"])


def public_vit(sd, x, taps, heads, swiglu=False):
    b, _, w, h = x.shape  # the public code names the height w and the width h
    t = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=14)
    t = t.flatten(2).transpose(1, 2)
    t = torch.cat((sd["cls_token"].expand(b, -1, -1), t), dim=1)
    pos = sd["pos_embed"]
    npatch, n = t.shape[1] - 1, pos.shape[1] - 1
    if npatch == n and w == h:
        pe = pos
    else:
        dim = t.shape[-1]
        w0, h0 = w // 14 + 0.1, h // 14 + 0.1
        sqrt_n = math.sqrt(n)
        grid = pos[:, 1:].reshape(1, int(sqrt_n), int(sqrt_n), dim).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, scale_factor=(w0 / sqrt_n, h0 / sqrt_n), mode="bicubic", antialias=False
        )
        assert grid.shape[-2:] == (int(w0), int(h0))
        pe = torch.cat((pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)
    t = t + pe
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    out = []
    for i in range(depth):
        p = f"blocks.{i}."
        bsz, ntok, c = t.shape
        qkv = _lin(_ln(t, sd, p + "norm1"), sd, p + "attn.qkv")
        qkv = qkv.reshape(bsz, ntok, 3, heads, c // heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (c // heads) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        y = _lin((a @ v).transpose(1, 2).reshape(bsz, ntok, c), sd, p + "attn.proj")
        t = t + y * sd[p + "ls1.gamma"]
        y = _ln(t, sd, p + "norm2")
        if swiglu:
            x1, x2 = _lin(y, sd, p + "mlp.w12").chunk(2, dim=-1)
            y = _lin(F.silu(x1) * x2, sd, p + "mlp.w3")
        else:
            y = _lin(F.gelu(_lin(y, sd, p + "mlp.fc1")), sd, p + "mlp.fc2")
        t = t + y * sd[p + "ls2.gamma"]
        if i in taps:
            out.append(t)
    return [_ln(o, sd, "norm")[:, 1:] for o in out]


def _conv(x, sd, name, **kw):
    return F.conv2d(x, sd[f"{name}.weight"], sd.get(f"{name}.bias"), **kw)


def _rcu(x, sd, name):
    out = _conv(F.relu(x), sd, f"{name}.conv1", padding=1)
    out = _conv(F.relu(out), sd, f"{name}.conv2", padding=1)
    return out + x


def _fusion(sd, name, *xs, size=None):
    output = xs[0]
    if len(xs) == 2:
        output = output + _rcu(xs[1], sd, f"{name}.resConfUnit1")
    output = _rcu(output, sd, f"{name}.resConfUnit2")
    mod = {"scale_factor": 2} if size is None else {"size": size}
    output = F.interpolate(output, **mod, mode="bilinear", align_corners=True)
    return _conv(output, sd, f"{name}.out_conv")


def public_head(sd, feats, ph, pw):
    layers = []
    for i, x in enumerate(feats):
        x = x.permute(0, 2, 1).reshape(x.shape[0], x.shape[-1], ph, pw)
        x = _conv(x, sd, f"head.projects.{i}")
        if i == 0:
            x = F.conv_transpose2d(
                x, sd["head.resize_layers.0.weight"], sd["head.resize_layers.0.bias"], stride=4
            )
        elif i == 1:
            x = F.conv_transpose2d(
                x, sd["head.resize_layers.1.weight"], sd["head.resize_layers.1.bias"], stride=2
            )
        elif i == 3:
            x = _conv(x, sd, "head.resize_layers.3", stride=2, padding=1)
        layers.append(x)
    rn = [_conv(x, sd, f"head.scratch.layer{i + 1}_rn", padding=1) for i, x in enumerate(layers)]
    s = "head.scratch."
    path4 = _fusion(sd, s + "refinenet4", rn[3], size=rn[2].shape[2:])
    path3 = _fusion(sd, s + "refinenet3", path4, rn[2], size=rn[1].shape[2:])
    path2 = _fusion(sd, s + "refinenet2", path3, rn[1], size=rn[0].shape[2:])
    path1 = _fusion(sd, s + "refinenet1", path2, rn[0])
    out = F.relu(_conv(path1, sd, s + "output_conv.0", padding=1))
    return _conv(out, sd, s + "output_conv.2")


def public_dpt(sd, x, taps, heads, comp_mask=None, swiglu=False):
    ph, pw = x.shape[-2] // 14, x.shape[-1] // 14
    backbone = {k.removeprefix("backbone."): v for k, v in sd.items() if k.startswith("backbone.")}
    feats = public_vit(backbone, x, taps, heads, swiglu)
    if comp_mask is not None:
        feats = [f * comp_mask.unsqueeze(1) for f in feats]
    out = public_head(sd, feats, ph, pw)
    return F.interpolate(out, (ph * 14, pw * 14), mode="bilinear", align_corners=True)


def public_comp_masks(bs, dim):
    """The public DPT.forward(comp_drop=True) sampling, on the CPU."""
    binomial = torch.distributions.binomial.Binomial(probs=0.5)
    dropout_mask1 = binomial.sample((bs // 2, dim)) * 2.0
    dropout_mask2 = 2.0 - dropout_mask1
    num_kept = int(bs // 2 * (1 - 0.5))
    kept_indexes = torch.randperm(bs // 2)[:num_kept]
    dropout_mask1[kept_indexes, :] = 1.0
    dropout_mask2[kept_indexes, :] = 1.0
    return torch.cat((dropout_mask1, dropout_mask2))


# ---------------------------------------------------------------- test helpers

# A small network for fast tests: every code path of the public sizes, narrow and shallow.
TINY = dict(embed_dim=32, depth=4, num_heads=2, layers=[0, 1, 2, 3], features=16,
            out_channels=[8, 16, 32, 24])  # fmt: skip


def tiny(num_classes=5, **kwargs):
    from semiseg.models.dpt import DPT

    return DPT(num_classes, encoder="dinov2_small", pretrained="scratch", **{**TINY, **kwargs})


def assert_close(ours, theirs):
    """Equal up to float32 rounding, relative to the logits' scale (they reach tens here)."""
    error = (ours - theirs).abs().max().item()
    assert error <= 1e-5 * theirs.abs().max().item() + 1e-5, error


def randomise(model, seed=0):
    """Every tensor random (LayerScale and biases away from their 1 / 0 initial values)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model
