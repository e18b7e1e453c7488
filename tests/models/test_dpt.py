"""model=dpt: DINOv2 + DPT against a transcription of the public UniMatch V2 forward
(model/backbone/dinov2.py, dinov2_layers/, model/semseg/dpt.py, model/util/blocks.py) with the
same weights; Meta's key layout loading into every tensor; any input size; Complementary Dropout
as the public code samples it."""

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from semiseg.errors import ConfigError
from semiseg.models.dinov2 import DINOv2
from semiseg.models.dpt import DPT, complementary_masks, nearest_multiple

sys.path.insert(0, str(Path(__file__).parents[1]))
from public_dpt import TINY, assert_close, public_comp_masks, public_dpt, tiny  # noqa: E402
from public_dpt import randomise as _randomise  # noqa: E402

# ---------------------------------------------------------------- forward against the transcription


@pytest.mark.parametrize("size", [(42, 56), (56, 56), (70, 28), (518, 518)])
def test_forward_matches_the_public_forward(size):
    torch.manual_seed(0)
    model = _randomise(tiny()).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ours = model(x)
        theirs = public_dpt(model.state_dict(), x, TINY["layers"], TINY["num_heads"])
    assert ours.shape == (2, 5, *size)
    assert_close(ours, theirs)


def test_public_sizes_tap_and_widths():
    """ViT-S as released (384 wide, 12 blocks, 6 heads, taps 2/5/8/11, head 64 and
    48/96/192/384): the same forward as the transcription."""
    torch.manual_seed(0)
    model = DPT(3, encoder="dinov2_small", pretrained="scratch").eval()
    x = torch.randn(1, 3, 28, 42)
    with torch.no_grad():
        ours = model(x)
        theirs = public_dpt(model.state_dict(), x, [2, 5, 8, 11], 6)
    assert_close(ours, theirs)
    assert model.head.scratch.layer1_rn.weight.shape == (64, 48, 3, 3)
    assert [p.weight.shape[0] for p in model.head.projects] == [48, 96, 192, 384]


def test_giant_swiglu_matches_the_public_forward():
    torch.manual_seed(0)
    model = _randomise(DPT(4, encoder="dinov2_giant", pretrained="scratch", **TINY)).eval()
    # hidden 4 x 32 = 128 -> (int(128 * 2 / 3) + 7) // 8 * 8 = 88
    assert model.backbone.blocks[0].mlp.w12.weight.shape == (2 * 88, 32)
    x = torch.randn(1, 3, 42, 28)
    with torch.no_grad():
        theirs = public_dpt(model.state_dict(), x, TINY["layers"], 2, swiglu=True)
        assert_close(model(x), theirs)


@pytest.mark.parametrize("encoder, millions", [("dinov2_small", 24.8), ("dinov2_base", 97.5)])
def test_parameter_counts_as_published(encoder, millions):
    """METHODS.md: the ViT-S DPT has 24.8 M parameters, the ViT-B run 97.5 M (Pascal, 21
    classes; the public logs' 'Total params')."""
    model = DPT(21, encoder=encoder, pretrained="scratch")
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.05)


# ---------------------------------------------------------------- any input size


@pytest.mark.parametrize("size", [(14, 14), (28, 98), (126, 70)])
def test_any_multiple_of_14_in_training(size):
    model = tiny().train()
    out = model(torch.randn(2, 3, *size))
    assert out.shape == (2, 5, *size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_other_sizes_are_resized_to_the_nearest_multiples_and_back():
    """The public evaluate(multiplier=14): resize to int(s / 14 + 0.5) * 14 (bilinear,
    align_corners), predict, resize the logits back."""
    torch.manual_seed(0)
    model = _randomise(tiny()).eval()
    x = torch.randn(1, 3, 75, 50)
    assert (nearest_multiple(75), nearest_multiple(50)) == (70, 56)
    with torch.no_grad():
        inside = F.interpolate(x, (70, 56), mode="bilinear", align_corners=True)
        theirs = public_dpt(model.state_dict(), inside, TINY["layers"], 2)
        theirs = F.interpolate(theirs, (75, 50), mode="bilinear", align_corners=True)
        ours = model(x)
    assert ours.shape == (1, 5, 75, 50)
    assert_close(ours, theirs)


def test_crop_size_must_be_a_multiple_of_14():
    with pytest.raises(ConfigError, match="crop_size=321 .* use 308 or 322"):
        tiny(crop_size=321)
    tiny(crop_size=322)


# ---------------------------------------------------------------- Meta's layout


def meta_keys(embed_dim, depth, swiglu=False):
    """Names and shapes of Meta's dinov2_vit*14_pretrain.pth (518 px, patch 14, no registers)."""
    d = embed_dim
    keys = {
        "cls_token": (1, 1, d),
        "pos_embed": (1, 37 * 37 + 1, d),
        "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, 14, 14),
        "patch_embed.proj.bias": (d,),
        "norm.weight": (d,),
        "norm.bias": (d,),
    }
    hidden = 4 * d
    for i in range(depth):
        p = f"blocks.{i}."
        keys.update({
            p + "norm1.weight": (d,), p + "norm1.bias": (d,),
            p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
            p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
            p + "ls1.gamma": (d,),
            p + "norm2.weight": (d,), p + "norm2.bias": (d,),
            p + "ls2.gamma": (d,),
        })  # fmt: skip
        if swiglu:
            h = (int(hidden * 2 / 3) + 7) // 8 * 8
            keys.update({
                p + "mlp.w12.weight": (2 * h, d), p + "mlp.w12.bias": (2 * h,),
                p + "mlp.w3.weight": (d, h), p + "mlp.w3.bias": (d,),
            })  # fmt: skip
        else:
            keys.update({
                p + "mlp.fc1.weight": (hidden, d), p + "mlp.fc1.bias": (hidden,),
                p + "mlp.fc2.weight": (d, hidden), p + "mlp.fc2.bias": (d,),
            })  # fmt: skip
    return keys


@pytest.mark.parametrize(
    "size, dim, depth, swiglu",
    [("small", 384, 12, False), ("base", 768, 12, False), ("large", 1024, 24, False),
     ("giant", 1536, 40, True)],
)  # fmt: skip
def test_backbone_names_and_shapes_are_metas(size, dim, depth, swiglu):
    with torch.device("meta"):
        vit = DINOv2(size)
    ours = {k: tuple(v.shape) for k, v in vit.state_dict().items()}
    assert ours == meta_keys(dim, depth, swiglu)


def _meta_file(path, embed_dim=384, depth=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in meta_keys(embed_dim, depth).items()}
    torch.save(state, path)
    return state


def test_meta_file_loads_into_every_backbone_tensor(tmp_path):
    folder = tmp_path / "pretrained"
    folder.mkdir()
    state = _meta_file(folder / "dinov2_small.pth")
    model = DPT(3, encoder="dinov2_small", pretrained="imagenet", pretrained_dir=str(folder))
    loaded = model.backbone.state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    # and as model.pretrained=PATH
    other = DPT(3, encoder="dinov2_small", pretrained=str(folder / "dinov2_small.pth"))
    assert torch.equal(other.backbone.pos_embed, state["pos_embed"])


def test_missing_or_mismatching_file_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as err:
        DPT(3, encoder="dinov2_base", pretrained="imagenet", pretrained_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert f"no DINOv2 weights for dinov2_base at {tmp_path / 'dinov2_base.pth'}" in message
    assert "dinov2_vitb14_pretrain.pth" in message and "model.pretrained=scratch" in message
    # a ViT-S file given to a ViT-B model: one line, the file and the fix
    _meta_file(tmp_path / "dinov2_base.pth", embed_dim=384, depth=12)
    with pytest.raises(ConfigError) as err:
        DPT(3, encoder="dinov2_base", pretrained="imagenet", pretrained_dir=str(tmp_path))
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "dinov2_base.pth") in message and "shape mismatches" in message
    assert "dinov2_vitb14_pretrain.pth" in message
    # a file lacking tensors
    state = torch.load(tmp_path / "dinov2_base.pth")
    del state["mask_token"]
    torch.save(state, tmp_path / "dinov2_small.pth")
    with pytest.raises(ConfigError, match="1 missing \\(mask_token\\)"):
        DPT(3, encoder="dinov2_small", pretrained="imagenet", pretrained_dir=str(tmp_path))


def test_public_checkpoint_names_load_strictly():
    """A public unimatch_v2.py checkpoint's `model` (DDP's `module.` prefix removed) has
    exactly our names and shapes: here the head's, written out from model/semseg/dpt.py."""
    model = DPT(21, encoder="dinov2_small", pretrained="scratch")
    f, (c1, c2, c3, c4) = 64, (48, 96, 192, 384)
    head = {
        **{f"head.projects.{i}.weight": (c, 384, 1, 1) for i, c in enumerate((c1, c2, c3, c4))},
        **{f"head.projects.{i}.bias": (c,) for i, c in enumerate((c1, c2, c3, c4))},
        "head.resize_layers.0.weight": (c1, c1, 4, 4), "head.resize_layers.0.bias": (c1,),
        "head.resize_layers.1.weight": (c2, c2, 2, 2), "head.resize_layers.1.bias": (c2,),
        "head.resize_layers.3.weight": (c4, c4, 3, 3), "head.resize_layers.3.bias": (c4,),
        **{f"head.scratch.layer{i}_rn.weight": (f, c, 3, 3)
           for i, c in enumerate((c1, c2, c3, c4), 1)},
        "head.scratch.output_conv.0.weight": (f, f, 3, 3), "head.scratch.output_conv.0.bias": (f,),
        "head.scratch.output_conv.2.weight": (21, f, 1, 1),
        "head.scratch.output_conv.2.bias": (21,),
    }  # fmt: skip
    for k in range(1, 5):
        r = f"head.scratch.refinenet{k}."
        head[r + "out_conv.weight"], head[r + "out_conv.bias"] = (f, f, 1, 1), (f,)
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                head[f"{r}{unit}.{conv}.weight"] = (f, f, 3, 3)
                head[f"{r}{unit}.{conv}.bias"] = (f,)
    expected = {f"backbone.{k}": v for k, v in meta_keys(384, 12).items()} | head
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


# ---------------------------------------------------------------- the perturbed forwards


def test_complementary_masks_are_the_public_sampling():
    for bs, dim in ((8, 32), (4, 384), (2, 5)):
        torch.manual_seed(3)
        theirs = public_comp_masks(bs, dim)
        torch.manual_seed(3)
        ours = complementary_masks(bs // 2, dim)
        assert torch.equal(ours, theirs)


def test_complementary_masks_shapes_kept_half_and_complement():
    torch.manual_seed(0)
    pairs, dim = 8, 64
    masks = complementary_masks(pairs, dim)
    assert masks.shape == (2 * pairs, dim)
    first, second = masks[:pairs], masks[pairs:]
    assert torch.equal(first + second, torch.full_like(first, 2.0))  # m + m' = 2
    whole = (first == 1).all(dim=1)
    assert int(whole.sum()) == pairs // 2  # int(pairs * 0.5) pairs kept whole
    dropped = first[~whole]
    assert set(dropped.unique().tolist()) <= {0.0, 2.0}  # the others: 0 or 2 per channel


def test_complementary_masks_are_bernoulli_half():
    torch.manual_seed(1)
    draws = torch.cat([complementary_masks(2, 1000)[:2] for _ in range(50)])
    dropped = draws[(draws != 1).any(dim=1)]  # rows not kept whole: one per draw
    assert dropped.shape[0] == 50
    rate = (dropped == 2).float().mean().item()  # 50,000 Bernoulli(0.5): std 0.0022
    assert abs(rate - 0.5) < 0.01
    # each pair is kept whole with probability 1/2
    kept = (draws.view(50, 2, 1000) == 1).all(dim=2).float()
    assert torch.equal(kept.sum(dim=1), torch.ones(50))


def test_complementary_dropout_forward_is_the_public_one():
    torch.manual_seed(0)
    model = _randomise(tiny()).train()
    x = torch.randn(4, 3, 28, 42)
    torch.manual_seed(7)
    ours = model(x, complementary_dropout=True)
    torch.manual_seed(7)
    mask = public_comp_masks(4, TINY["embed_dim"])
    with torch.no_grad():
        theirs = public_dpt(model.state_dict(), x, TINY["layers"], 2, comp_mask=mask)
    assert_close(ours.detach(), theirs)
    with pytest.raises(ValueError, match="odd"):
        model(torch.randn(3, 3, 28, 28), complementary_dropout=True)


def test_feature_perturbation_for_unimatch_v1():
    torch.manual_seed(0)
    model = _randomise(tiny()).eval()
    x = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        logits, logits_fp = model(x, feature_perturbation=True)
        assert torch.allclose(logits, model(x), atol=1e-5)
    assert logits_fp.shape == logits.shape == (2, 5, 28, 28)
    assert not torch.allclose(logits, logits_fp)


def test_freeze_backbone_and_parameter_groups():
    model = tiny(freeze_backbone=True)
    assert list(model.backbone_parameters()) == []
    assert all(not p.requires_grad for p in model.backbone.parameters())
    head = list(model.head_parameters())
    assert head and all(p.requires_grad for p in head)
    free = tiny()
    ids = {id(p) for p in free.backbone_parameters()} | {id(p) for p in free.head_parameters()}
    assert ids == {id(p) for p in free.parameters() if p.requires_grad}
    # frozen: what never gets a gradient (DINOv2's mask token, the coarsest fusion's unused
    # first unit), so DDP without find_unused_parameters works
    frozen = {n for n, p in free.named_parameters() if not p.requires_grad}
    assert frozen == {"backbone.mask_token"} | {
        f"head.scratch.refinenet4.resConfUnit1.{c}.{w}"
        for c in ("conv1", "conv2")
        for w in ("weight", "bias")
    }


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = _randomise(tiny()).train()
    again = _randomise(tiny(checkpointing=True)).train()
    x = torch.randn(2, 3, 28, 28)
    plain(x).square().mean().backward()
    again(x).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), again.parameters(), strict=True):
        if a.requires_grad:
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name


def test_bf16_autocast_forward_and_backward():
    """The few-GPU path: bf16 autocast runs the ViT (attention, interpolated positions) and the
    head, and the gradients reach every trainable weight."""
    model = tiny().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 3, 42, 28), complementary_dropout=True)
    assert out.shape == (2, 5, 42, 28) and torch.isfinite(out).all()
    out.float().mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
