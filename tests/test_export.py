"""export.py: ONNX and TorchScript files of the tiny checkpoint match PyTorch at any size, and
predict.py on them writes the checkpoint's predictions; bad input fails in one line."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from cli import REPO, run_script
from omegaconf import OmegaConf
from PIL import Image
from trained import image_tensor

import semiseg.predict
from semiseg import export
from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
from semiseg.data import palettes
from semiseg.errors import exit_on_user_error
from semiseg.evaluation.inference import predict

FORMATS = ["onnx", "torchscript"]
IMAGES = ["a.png", "sub/b.png"]  # copies of toy training images 0 and 1
THIRD = (3, 45, 70)  # a size used neither as the export example nor in its parity check


def export_cli(checkpoint, *overrides):
    return run_script("export.py", f"ckpt_path={checkpoint}", *overrides)


def export_cfg(*overrides: str):
    """conf/export.yaml with overrides, as export.py composes it (for in-process runs)."""
    cfg = OmegaConf.load(REPO / "conf" / "export.yaml")
    for key in ("hydra", "defaults"):
        cfg.pop(key)
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))


def fails_in_one_line(capsys, *overrides, code=2) -> str:
    """export's run in-process as export.py runs it: exit `code` and one `error: ...` line."""
    with pytest.raises(SystemExit) as exit_info:
        exit_on_user_error(export.run)(export_cfg(*overrides))
    assert exit_info.value.code == code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def reference(varied_checkpoint):
    """The checkpoint's eval network in PyTorch."""
    return model_from_checkpoint(load_checkpoint(varied_checkpoint)).eval()


@pytest.fixture(scope="module", params=FORMATS)
def exported(request, varied_checkpoint, tmp_path_factory):
    fmt = request.param
    path = tmp_path_factory.mktemp(fmt) / f"model{export.FORMATS[fmt]}"
    proc = export_cli(varied_checkpoint, f"format={fmt}", f"output={path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return fmt, path, proc


@pytest.fixture(scope="module")
def images(tmp_path_factory, toy_root):
    root = tmp_path_factory.mktemp("images")
    for k, rel in enumerate(IMAGES):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.open(toy_root / "images" / f"train_{k:04d}.png").convert("RGB").save(root / rel)
    return root


def predict_cli(model_path, images, output, *overrides):
    return run_script(
        "predict.py", f"ckpt_path={model_path}", f"input={images}", f"output={output}", *overrides
    )


@pytest.fixture(scope="module")
def checkpoint_predictions(varied_checkpoint, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("predicted") / "checkpoint"
    proc = predict_cli(varied_checkpoint, images, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_export_checks_parity_on_two_sizes_and_writes_its_json(exported, varied_checkpoint):
    fmt, path, proc = exported
    meta = json.loads(export.metadata_path(path).read_text())
    state = load_checkpoint(varied_checkpoint)["semiseg"]
    assert meta["format"] == fmt and meta["file"] == path.name and meta["network"] == "student"
    assert meta["class_names"] == list(state["class_names"])
    num_classes = len(meta["class_names"])
    toy_palette = palettes.resolve(state["config"]["dataset"]["palette"], num_classes)
    assert meta["palette"] == toy_palette[:num_classes].tolist()
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert (meta["eval_mode"], meta["crop_size"]) == ("original", 64)
    results = meta["parity"]["results"]
    assert [r["shape"] for r in results] == [[2, 3, 64, 96], [1, 3, 80, 80]]
    for result in results:
        assert result["max_abs_diff"] < 1e-4, result
        assert result["argmax_agreement"] >= 0.999, result
        # the numbers are printed as well
        shape = "x".join(map(str, result["shape"]))
        assert f"parity {shape}: max |logits - PyTorch| {result['max_abs_diff']:.2e}" in proc.stdout


def test_exported_model_takes_any_batch_height_and_width(exported, reference):
    fmt, path, _ = exported
    model = export.load_model(fmt, path)
    n, h, w = THIRD
    image = torch.randn((n, 3, h, w), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = reference(image)
        got = model(image)
    assert got.shape == (n, expected.shape[1], h, w)
    assert (got - expected).abs().max() < 1e-4
    top2 = expected.topk(2, dim=1).values
    clear = top2[:, 0] - top2[:, 1] > 1e-4  # near-ties may go either way
    assert clear.float().mean() > 0.95
    assert torch.equal(got.argmax(1)[clear], expected.argmax(1)[clear])
    if fmt == "onnx":  # the graph's input and output sizes are symbols, not numbers
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
        for value in (graph.input[0], graph.output[0]):
            dims = value.type.tensor_type.shape.dim
            names = [dims[i].dim_param or dims[i].dim_value for i in range(4)]
            assert names[0::2] == ["batch", "height"] and names[3] == "width"


@pytest.mark.slow  # two predict.py processes per format (about 25 s each on 2 cores)
def test_predict_on_the_exported_file_writes_the_checkpoints_classes(
    exported, images, checkpoint_predictions, reference, tmp_path
):
    fmt, path, _ = exported
    out = tmp_path / "predicted"
    proc = predict_cli(path, images, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "predict.json").read_text())
    assert summary["format"] == fmt and summary["network"] == "student"
    num_classes = len(summary["class_names"])
    for rel in IMAGES:
        name = rel  # PNG inputs keep their names
        ours = Image.open(out / "index" / name)
        theirs = Image.open(checkpoint_predictions / "index" / name)
        assert ours.mode == theirs.mode == "P" and ours.getpalette() == theirs.getpalette()
        ours, theirs = np.array(ours), np.array(theirs)
        probs = predict(reference, image_tensor(images / rel), "original", 64, num_classes)
        top2 = probs[0].topk(2, dim=0).values
        clear = (top2[0] - top2[1] > 1e-4).numpy()
        assert clear.mean() > 0.95 and len(np.unique(theirs)) >= 3
        assert np.array_equal(ours[clear], theirs[clear])
        for kind in ("colour", "overlay"):
            assert (out / kind / name).is_file()


def test_sliding_window_runs_through_the_exported_model(exported, images, reference):
    # predict.py's code paths take the exported model as they take the network
    fmt, path, _ = exported
    model, meta = export.load_exported(path)
    x = image_tensor(images / IMAGES[0])
    num_classes = len(meta["class_names"])
    expected = predict(reference, x, "sliding_window", 40, num_classes, "truncate")
    got = predict(model, x, "sliding_window", 40, num_classes, "truncate")
    assert got.shape == expected.shape == (1, num_classes, *x.shape[-2:])
    assert (got - expected).abs().max() < 1e-4


def test_predict_errors_on_exported_files_are_one_line(exported, images, tmp_path, capsys):
    fmt, path, _ = exported
    bare = tmp_path / f"bare{export.FORMATS[fmt]}"
    bare.write_bytes(path.read_bytes())  # without its JSON
    broken = tmp_path / f"broken{export.FORMATS[fmt]}"
    broken.write_bytes(b"not a model")
    meta = json.loads(export.metadata_path(path).read_text())
    meta.pop("sha256")  # as an export written before the hash: the runtime's own refusal
    export.metadata_path(broken).write_text(json.dumps(meta))
    cases = [
        ((bare,), f"{bare.name}.json"),
        ((broken,), f"{broken.name} cannot be loaded as {fmt}"),
        ((path, "eval.model=teacher"), "holds the student"),
        ((path, "precision=bf16"), "precision=bf16"),
    ]
    for (model_path, *overrides), text in cases:
        cfg = OmegaConf.load(REPO / "conf" / "predict.yaml")
        for key in ("hydra", "defaults"):
            cfg.pop(key)
        args = [f"ckpt_path={model_path}", f"input={images}", f"output={tmp_path / 'o'}"]
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(args + overrides))
        with pytest.raises(SystemExit) as exit_info:
            exit_on_user_error(semiseg.predict.run)(cfg)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and text in err[0], err


def test_export_errors_are_one_line(varied_checkpoint, tmp_path, capsys, monkeypatch):
    ckpt = f"ckpt_path={varied_checkpoint}"
    line = fails_in_one_line(capsys, f"ckpt_path={tmp_path / 'no.ckpt'}")
    assert "no.ckpt does not exist" in line
    line = fails_in_one_line(capsys, ckpt, "format=tflite")
    assert "format=tflite" in line and "onnx, openvino, torchscript" in line
    (tmp_path / "file").write_text("")
    line = fails_in_one_line(capsys, ckpt, f"output={tmp_path / 'file' / 'model.onnx'}")
    assert "cannot be created" in line and "give a path you can write to" in line
    line = fails_in_one_line(capsys, ckpt, f"output={tmp_path}")
    assert "is a folder" in line
    with monkeypatch.context() as installed:  # openvino or not, the name is checked
        installed.setattr(export, "_require", lambda *args: None)
        line = fails_in_one_line(capsys, ckpt, "format=openvino", f"output={tmp_path / 'm.onnx'}")
    assert f"output={tmp_path / 'm.onnx'}: OpenVINO writes an .xml" in line
    assert line.endswith("give output=NAME.xml")
    line = fails_in_one_line(capsys, ckpt, "parity.shapes=[[1,64,64]]")
    assert "parity.shapes" in line
    line = fails_in_one_line(capsys, ckpt, "eval.model=teacher")  # a supervised run
    assert "eval.model=teacher" in line and "student" in line
    # an exported model that does not match PyTorch is a fault: exit 1, no JSON beside it
    out = tmp_path / "m.torchscript.pt"
    args = ("format=torchscript", f"output={out}", "parity.min_agreement=1.5")
    line = fails_in_one_line(capsys, ckpt, *args, code=1)
    assert "does not match PyTorch" in line and "parity.min_agreement" in line
    assert not export.metadata_path(out).exists()
    # without openvino installed: how to install it
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "openvino" else find_spec(name),
    )
    line = fails_in_one_line(capsys, ckpt, "format=openvino")
    assert "pip install openvino" in line and "semiseg[export]" in line


@pytest.mark.slow  # two processes (about 25 s on 2 busy cores)
def test_command_line_errors_are_one_line(varied_checkpoint, images, tmp_path):
    bare = tmp_path / "bare.onnx"
    bare.write_bytes(b"")  # no bare.onnx.json beside it
    cases = [
        (export_cli(varied_checkpoint, "format=tflite"), "format=tflite"),
        (predict_cli(bare, images, tmp_path / "o"), "bare.onnx.json"),
    ]
    for proc, text in cases:
        assert proc.returncode == 2, proc.stderr[-2000:]
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and text in lines[0], lines


@pytest.mark.slow  # an ONNX export and its conversion (about 30 s on 2 busy cores)
def test_openvino_export_and_predict(varied_checkpoint, images, checkpoint_predictions, tmp_path):
    pytest.importorskip("openvino")
    path = tmp_path / "model.xml"
    proc = export_cli(varied_checkpoint, "format=openvino", f"output={path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert path.with_suffix(".bin").is_file()
    meta = json.loads(export.metadata_path(path).read_text())
    for result in meta["parity"]["results"]:
        assert result["max_abs_diff"] < 1e-4 and result["argmax_agreement"] >= 0.999, result
    out = tmp_path / "predicted"
    proc = predict_cli(path, images, out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rel in IMAGES:
        ours = np.array(Image.open(out / "index" / rel))
        theirs = np.array(Image.open(checkpoint_predictions / "index" / rel))
        assert (ours != theirs).mean() < 0.01
