"""The DINOv2 vision transformer as UniMatch V2 builds it: patch 14, 518 px, no register tokens,
LayerScale initialised at 1, the positional embedding interpolated (bicubic, offset 0.1, no
antialiasing) to any grid of patches; an MLP feed-forward for small, base and large and a SwiGLU
one for giant.

Parameter names are those of Meta's released files (`dinov2_vit{s,b,l,g}14_pretrain.pth`, which
the public UniMatch V2 code renames `pretrained/dinov2_{small,base,large,giant}.pth`):
`cls_token`, `pos_embed`, `mask_token`, `patch_embed.proj`, `blocks.<i>.{norm1, attn.qkv,
attn.proj, ls1.gamma, norm2, mlp.fc1, mlp.fc2 | mlp.w12, mlp.w3, ls2.gamma}`, `norm`. Such a file
loads into every tensor with `load_state_dict(strict=True)`, and so does the `backbone.*` part of
a checkpoint written by the public unimatch_v2.py.

Only what segmentation uses is here: `intermediate(x, layers)` gives the final-normed patch
tokens after the chosen blocks (the public `get_intermediate_layers(x, layers)` with its
defaults: norm on, class token dropped). The masked-token path of DINOv2's own training is not
(`mask_token` is kept only so the released files load unchanged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

PATCH = 14
IMAGE_SIZE = 518  # the pretraining resolution: a 37 x 37 grid of positional embeddings
POS_OFFSET = 0.1  # the interpolation's offset (DINOv2 without registers; 0.0 with registers)


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int
    ffn: str  # mlp | swiglu


# The public DINOv2 sizes (vit_small, vit_base, vit_large, vit_giant2), and this project's own
# `tiny` (DeiT-Ti's width and depth, no released weights) for the toy and CPU tests.
SIZES = {
    "tiny": ViTSize(192, 12, 3, "mlp"),
    "small": ViTSize(384, 12, 6, "mlp"),
    "base": ViTSize(768, 12, 12, "mlp"),
    "large": ViTSize(1024, 24, 16, "mlp"),
    "giant": ViTSize(1536, 40, 24, "swiglu"),
}


class PatchEmbed(nn.Module):
    """Non-overlapping 14 x 14 patches, linearly embedded: (N, 3, H, W) -> (N, H/14 * W/14, D)."""

    def __init__(self, embed_dim: int, in_channels: int = 3, patch: int = PATCH):
        super().__init__()
        self.patch = patch
        self.proj = nn.Conv2d(in_channels, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if h % self.patch or w % self.patch:
            raise ValueError(f"input {h}x{w} is not a multiple of the patch size {self.patch}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (scaled dot product)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, tokens, dim = x.shape
        # (3, N, heads, tokens, head_dim)
        qkv = self.qkv(x).view(n, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, tokens, dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """ViT-g's feed-forward: silu(x W1) * (x W2), then W3, with W1 and W2 fused in `w12`.
    DINOv2 shrinks the hidden width to 2/3 of 4 x dim, rounded up to a multiple of 8."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then + ls2(ffn(norm2(x)))."""

    def __init__(self, dim: int, num_heads: int, ffn: str = "mlp", mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = SwiGLU(dim, hidden) if ffn == "swiglu" else Mlp(dim, hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """DINOv2 ViT/14 without registers.

    `size` is one of SIZES; `embed_dim`, `depth` and `num_heads` override its values (a small
    network for tests and the toy: such a network has no released weights). `checkpointing`
    recomputes each block's activations in the backward pass instead of keeping them (less
    memory, about one more forward of time), in training only.
    """

    def __init__(
        self,
        size: str = "small",
        embed_dim: int | None = None,
        depth: int | None = None,
        num_heads: int | None = None,
        checkpointing: bool = False,
    ):
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"unknown DINOv2 size {size!r}: one of {', '.join(SIZES)}")
        spec = SIZES[size]
        dim = embed_dim or spec.embed_dim
        depth = depth or spec.depth
        heads = num_heads or spec.num_heads
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not a multiple of num_heads {heads}")
        self.embed_dim = dim
        self.depth = depth
        self.checkpointing = checkpointing
        grid = IMAGE_SIZE // PATCH
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        # DINOv2's masked-token training only: never in a segmentation forward, so never a
        # gradient (the public code trains it in name only); frozen, DDP finds no unused weight.
        self.mask_token = nn.Parameter(torch.zeros(1, dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(dim, heads, spec.ffn) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """DINOv2's initialisation: truncated normal (std 0.02) positional embeddings and linear
        weights with zero biases, a near-zero class token; the rest as PyTorch builds it."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def position_embedding(self, rows: int, cols: int) -> Tensor:
        """The positional embeddings of a rows x cols grid of patches (class token first):
        the pretrained 37 x 37 grid resized by bicubic interpolation with the scale factors
        (rows + 0.1) / 37 and (cols + 0.1) / 37, as DINOv2 does (not to a target size: the
        two sample different points)."""
        count = self.pos_embed.shape[1] - 1
        if torch.compiler.is_exporting():  # rows and cols are symbols: no branch, no scale_factor
            return self._position_embedding_by_matrices(rows, cols)
        if rows == cols and rows * cols == count:
            return self.pos_embed
        side = math.sqrt(count)
        table = self.pos_embed.float()
        grid = table[:, 1:].reshape(1, int(side), int(side), -1).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid,
            scale_factor=((rows + POS_OFFSET) / side, (cols + POS_OFFSET) / side),
            mode="bicubic",
            antialias=False,
        )
        if grid.shape[-2:] != (rows, cols):  # the offset guards against this
            raise RuntimeError(f"positional embedding resized to {tuple(grid.shape[-2:])}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat((table[:, :1], grid), dim=1).to(self.pos_embed.dtype)

    def _position_embedding_by_matrices(self, rows, cols) -> Tensor:
        """`position_embedding` for export.py (ONNX with dynamic height and width): the same
        bicubic resize written as (rows x 37) and (cols x 37) weight matrices, and the pretrained
        grid's shortcut as a select, so that the graph holds for every input size."""
        side = int(math.sqrt(self.pos_embed.shape[1] - 1))
        table = self.pos_embed.float()
        grid = table[0, 1:].reshape(side, side, -1)
        pretrained = (torch.ones(rows).sum() == side) & (torch.ones(cols).sum() == side)
        by_rows = torch.where(pretrained, _identity(rows, side), _bicubic(rows, side, rows))
        by_cols = torch.where(pretrained, _identity(cols, side), _bicubic(cols, side, cols))
        resized = torch.einsum("rh,hwd,cw->rcd", by_rows, grid, by_cols)
        resized = resized.reshape(1, rows * cols, -1)
        return torch.cat((table[:, :1], resized), dim=1).to(self.pos_embed.dtype)

    def tokens(self, x: Tensor) -> Tensor:
        """Class token and patch embeddings, with their positional embeddings."""
        rows, cols = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        patches = self.patch_embed(x)
        tokens = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), patches), dim=1)
        return tokens + self.position_embedding(rows, cols).to(tokens.dtype)

    def intermediate(self, x: Tensor, layers) -> list[Tensor]:
        """The patch tokens (N, H/14 * W/14, D) after each block in `layers` (0-based), each
        through the final LayerNorm, in the order of `layers`."""
        layers = list(layers)
        if any(i < 0 or i >= self.depth for i in layers):
            raise ValueError(f"layers {layers} outside the {self.depth} blocks")
        tokens = self.tokens(x)
        taken = {}
        for index, block in enumerate(self.blocks[: max(layers) + 1]):
            if self.checkpointing and self.training and torch.is_grad_enabled():
                tokens = checkpoint(block, tokens, use_reentrant=False)
            else:
                tokens = block(tokens)
            if index in layers:
                taken[index] = tokens
        return [self.norm(taken[i])[:, 1:] for i in layers]


def _identity(size, side: int) -> Tensor:
    return (torch.arange(size)[:, None] == torch.arange(side)[None]).float()


def _bicubic(size, side: int, patches) -> Tensor:
    """(size, side) weights of F.interpolate(mode="bicubic", align_corners=False) from `side` to
    `size` points at scale_factor (patches + 0.1) / side: source point (i + 0.5) / scale - 0.5,
    Keys' cubic convolution (a = -0.75) on its 4 neighbours, indices clamped at the border."""
    scale = (patches + POS_OFFSET) / side
    source = (torch.arange(size, dtype=torch.float32) + 0.5) / scale - 0.5
    start = torch.floor(source)
    t = source - start
    a = -0.75

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = torch.stack((far(t + 1), near(t), near(1 - t), far(2 - t)), dim=1)
    index = (start.long()[:, None] + torch.arange(-1, 3)).clamp(0, side - 1)
    return torch.zeros(size, side).scatter_add(1, index, weights)
