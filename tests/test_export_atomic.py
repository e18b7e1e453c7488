"""export.py writes the model and its JSON together: a failed parity check leaves an earlier
export (model and JSON) as it was, and a new model beside an old JSON (an export killed between
the two renames) is refused by predict.py in one line instead of predicted with the old classes."""

import json

import pytest
import torch
from test_export import export_cfg

from semiseg import export, exported_files
from semiseg.errors import ConfigError, FaultError


def _files(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _other_weights(checkpoint, tmp_path):
    """The same run with its convolutions moved: an export of it differs from the first."""
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"] = {
        k: v * 1.1 if v.dim() == 4 else v for k, v in saved["state_dict"].items()
    }  # every convolution's weights
    saved["semiseg"]["class_names"] = [f"renamed_{c}" for c in saved["semiseg"]["class_names"]]
    path = tmp_path / "other.ckpt"
    torch.save(saved, path)
    return path


def test_a_failed_parity_leaves_the_earlier_export_whole(varied_checkpoint, tmp_path):
    out = tmp_path / "export" / "model.torchscript.pt"
    export.run(export_cfg(f"ckpt_path={varied_checkpoint}", "format=torchscript", f"output={out}"))
    before = _files(out.parent)
    assert sorted(before) == [out.name, out.name + ".json"]
    other = _other_weights(varied_checkpoint, tmp_path)
    with pytest.raises(FaultError, match="does not match PyTorch.*the earlier export is kept"):
        export.run(
            export_cfg(
                f"ckpt_path={other}",
                "format=torchscript",
                f"output={out}",
                "parity.min_agreement=1.5",
            )  # fmt: skip
        )
    assert _files(out.parent) == before  # same files, same bytes, no temporary left


def test_a_new_model_beside_an_old_json_is_refused(varied_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "export" / "model.torchscript.pt"
    export.run(export_cfg(f"ckpt_path={varied_checkpoint}", "format=torchscript", f"output={out}"))
    old_json = export.metadata_path(out).read_bytes()
    # the second export dies between the model's rename and the JSON's
    real_replace = exported_files.os.replace

    def killed_before_the_json(source, target):
        if str(target).endswith(".json"):
            raise KeyboardInterrupt  # what a kill at that moment leaves on disk
        real_replace(source, target)

    monkeypatch.setattr(exported_files.os, "replace", killed_before_the_json)
    other = _other_weights(varied_checkpoint, tmp_path)
    with pytest.raises(KeyboardInterrupt):
        export.run(export_cfg(f"ckpt_path={other}", "format=torchscript", f"output={out}"))
    monkeypatch.undo()
    assert export.metadata_path(out).read_bytes() == old_json  # the old classes, a new model
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name, out.name + ".json"]
    with pytest.raises(ConfigError) as refused:
        export.load_exported(out)
    assert str(out) in str(refused.value) and "SHA-256 differs" in str(refused.value)
    # the JSON names the hash of the model it was written with
    meta = json.loads(old_json)
    assert list(meta["sha256"]) == [out.name] and len(meta["sha256"][out.name]) == 64
