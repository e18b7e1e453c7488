"""The validation-overlap check of the natural-image lists, also for ACDC (a training slice of a
validation volume: same patient and frame) and change detection (a validation pair also in
labeled.txt or unlabeled.txt): one line at setup, nothing trained."""

import shutil
import sys
from pathlib import Path

from test_change import WHU
from test_medical import ACDC, _datamodule

from semiseg.data.datamodule import SemiSegDataModule

sys.path.insert(0, str(Path(__file__).parents[1]))
import layouts  # noqa: E402
from cli import setup_fails  # noqa: E402


def _append(list_file: Path, line: str) -> None:
    list_file.write_text(list_file.read_text() + line + "\n")


def test_acdc_slice_of_a_validation_volume_in_labeled_txt_is_refused(tmp_path, capsys):
    root = layouts.acdc(tmp_path / "ACDC")
    volume = (root / "splits" / "val.txt").read_text().split()[0]  # data/patient00N_frame01.h5
    stem = Path(volume).stem
    _append(root / "splits" / "1" / "labeled.txt", f"data/slices/{stem}_slice_0.h5")
    shutil.copy(root / "data" / "slices" / "patient001_frame01_slice_0.h5",
                root / "data" / "slices" / f"{stem}_slice_0.h5")  # fmt: skip
    line = setup_fails(_datamodule(root), capsys)
    assert "1 images of" in line and "labeled.txt are also in" in line and stem in line
    assert ACDC["format"] == "h5"


def test_change_detection_validation_pair_in_unlabeled_txt_is_refused(tmp_path, capsys):
    root = layouts.change_detection(tmp_path / "WHU-CD-256", style="whu")
    pair = (root / "splits" / "test.txt").read_text().split()[0]
    _append(root / "splits" / "5%" / "unlabeled.txt", pair)
    dm = SemiSegDataModule(
        root=str(root), splits_dir=str(root / "splits"), split="5%", crop_size=32,
        batch_size=2, num_workers=0, dataset=WHU,
    )  # fmt: skip
    line = setup_fails(dm, capsys)
    assert "unlabeled.txt are also in" in line and pair in line
