"""ADE20K (SceneParsing): write `splits/val.txt` for the 2,000 validation images if missing.

    python -m semiseg.data.prepare.ade20k ROOT

ROOT is the `ADEChallengeData2016` folder: `images/{training,validation}/ADE_*.jpg` and
`annotations/{training,validation}/ADE_*.png` (0 = "other", 1..150 = classes; dataset=ade20k
maps them with label_map reduce_zero, so the files are used as they are). The training splits
are UniMatch V2's `splits/ade20k/<1_64 ... 1_2>/`, or make one with semiseg.data.prepare.splits.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semiseg.data.prepare.common import write_val_if_missing
from semiseg.data.splits import Sample, SplitError
from semiseg.errors import exit_on_user_error

LAYOUT = (
    "<root>/images/{training,validation}/ADE_*.jpg and "
    "<root>/annotations/{training,validation}/ADE_*.png (root = ADEChallengeData2016)"
)


def samples(root: Path, part: str) -> list[Sample]:
    root = Path(root)
    images = root / "images" / part
    if not images.is_dir() or not (root / "annotations" / part).is_dir():
        raise SplitError(f"{images} or its annotations folder is missing; expected {LAYOUT}")
    out = []
    for image in sorted(images.glob("*.jpg")):
        mask = Path("annotations") / part / f"{image.stem}.png"
        if (root / mask).is_file():
            out.append(Sample(f"images/{part}/{image.name}", mask.as_posix()))
    return out


@exit_on_user_error
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m semiseg.data.prepare.ade20k",
        description="splits/val.txt of ADEChallengeData2016 (validation images with annotations).",
    )
    parser.add_argument("root", type=Path, help="the ADEChallengeData2016 folder")
    parser.add_argument("--splits-dir", type=Path, help="default: ROOT/splits")
    args = parser.parse_args(argv)
    val = samples(args.root, "validation")
    print("ade20k: " + write_val_if_missing(args.splits_dir or args.root / "splits", val, "images"))


if __name__ == "__main__":
    main()
