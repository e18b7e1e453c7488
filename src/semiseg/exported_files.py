"""An exported model's files and its JSON, written together and checked together.

export.py stages the model under a temporary name, checks it, then renames the model file(s)
and the JSON into place. The JSON carries the model's SHA-256, so the one moment they can
disagree (a crash between the two renames: a new model beside the old JSON, whose class names
and palette would be wrong for it) is caught by predict.py, which refuses the pair in one line.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from semiseg.errors import ConfigError


def metadata_path(path) -> Path:
    """The JSON written beside an exported file: `model.onnx` -> `model.onnx.json`."""
    path = Path(str(path))
    return path.with_name(path.name + ".json")


def publish(path: Path, staged: Path, meta: dict) -> None:
    """Model file(s), then the JSON, each synced and renamed into place. The JSON names the
    model's SHA-256: a crash between the renames leaves a new model beside the old JSON, which
    predict.py refuses (`check_model_hash`) instead of using the old class names and palette."""
    meta_file = metadata_path(path)
    staged_meta = staged.with_name(staged.name + ".json")
    staged_meta.write_text(json.dumps(meta, indent=2) + "\n")
    try:
        for source in (*model_files(staged), staged_meta):
            with open(source, "rb") as f:
                os.fsync(f.fileno())
        for source, target in zip(model_files(staged), model_files(path), strict=True):
            os.replace(source, target)
        os.replace(staged_meta, meta_file)
    finally:
        staged_meta.unlink(missing_ok=True)


def model_files(path: Path) -> list[Path]:
    """The files of an exported model: OpenVINO's .xml has its weights in a .bin beside it."""
    return [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_model_hash(path: Path, meta: dict) -> None:
    """The model beside the JSON is the one the JSON describes: its file(s), in the order of
    `model_files`, hash as the JSON says (a copy under another name is fine). Exports written
    before the hash existed carry none and are not checked."""
    expected = list((meta.get("sha256") or {}).values())
    for file, digest in zip(model_files(path), expected, strict=False):
        if not file.is_file() or sha256(file) != digest:
            raise ConfigError(
                f"{file} is not the model {metadata_path(path).name} describes (its SHA-256 "
                "differs: an export interrupted between the two files, or a file replaced by "
                "hand): export again with export.py"
            )


def hashes(path: Path, staged: Path) -> dict[str, str]:
    """{final file name: SHA-256} of the staged model file(s)."""
    return {
        final.name: sha256(source)
        for final, source in zip(model_files(path), model_files(staged), strict=True)
    }
