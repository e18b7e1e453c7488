"""A folder shaped as users bring their own binary data, to try the quickstart without any:

    python -m semiseg.data.prepare.demo_cells cells [--masked 40] [--unmasked 20] [--seed 0]

writes `cells/images/cell_NN.png`, grayscale ('L') images of noisy background with a few bright
elliptic cells of varied size and brightness, and `cells/masks/cell_NN.png` for the first
`--masked` of them, stored as 0 (background) and 255 (cell) as binary annotation tools write
them. The other `--unmasked` images have no mask: the split makes them unlabeled. Nothing is
downloaded; the same seed writes the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from semiseg.errors import exit_on_user_error

SIZE = (96, 80)  # width, height


def cell_image(rng: np.random.Generator, size=SIZE) -> tuple[np.ndarray, np.ndarray]:
    """One image (uint8) and its 0/255 mask."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    background = rng.normal(60, 18, (h, w)) + 20 * np.sin(xx / rng.uniform(8, 20))
    image = background.copy()
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(rng.integers(1, 5)):
        cy, cx = rng.uniform(8, h - 8), rng.uniform(8, w - 8)
        ry, rx = rng.uniform(5, 14), rng.uniform(5, 14)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        image[inside] = rng.normal(rng.uniform(120, 200), 15, inside.sum())
        mask |= inside
    return np.clip(image, 0, 255).astype(np.uint8), mask.astype(np.uint8) * 255


def write(root: Path, masked: int = 40, unmasked: int = 20, seed: int = 0) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(masked + unmasked):
        image, mask = cell_image(np.random.default_rng([seed, i]))
        Image.fromarray(image, mode="L").save(root / "images" / f"cell_{i:02d}.png")
        if i < masked:
            Image.fromarray(mask, mode="L").save(root / "masks" / f"cell_{i:02d}.png")


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="the folder to write (images/, masks/)")
    parser.add_argument("--masked", type=int, default=40, help="images with a mask")
    parser.add_argument("--unmasked", type=int, default=20, help="images without a mask")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    write(args.root, args.masked, args.unmasked, args.seed)
    print(
        f"wrote {args.masked + args.unmasked} grayscale images to {args.root / 'images'}, "
        f"{args.masked} with a 0/255 mask in {args.root / 'masks'}"
    )


if __name__ == "__main__":
    main()
