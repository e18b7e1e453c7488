"""Export a checkpoint's inference network (export.py) and run exported files (predict.py).

The exported model takes a normalised image batch (N, 3, H, W), float32, and returns the logits
(N, C, H, W); batch, height and width are dynamic. After exporting, `run` compares the exported
model with PyTorch on random inputs of two sizes and writes `<file>.json` beside the file: class
names, palette, normalisation, the eval mode and crop size, and those parity numbers. predict.py
reads that JSON when `ckpt_path` is an exported file (`load_exported`) and predicts through the
same whole-image / sliding-window code as for a checkpoint.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from semiseg.checkpoints.load import load_checkpoint, model_from_checkpoint
from semiseg.data import change, palettes
from semiseg.data import transforms as tf
from semiseg.errors import ConfigError, FaultError, one_line
from semiseg.exported_files import check_model_hash, hashes, metadata_path, model_files, publish

# format -> the suffix of its default file name (beside the checkpoint)
FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".torchscript.pt"}
INSTALL = "pip install 'semiseg[export]'"
# what each format needs to export (and check) and to run
NEEDS = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "openvino": ("onnx", "onnxscript", "openvino"),
    "torchscript": (),
}
RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": None}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
MEAN = [round(float(v), 6) for v in tf.IMAGENET_MEAN.flatten()]
STD = [round(float(v), 6) for v in tf.IMAGENET_STD.flatten()]


class Logits(nn.Module):
    """The network as exported: normalised image (N, 3, H, W) -> logits (N, C, H, W)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)


def _require(fmt: str, packages, purpose: str) -> None:
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"{purpose} needs {', '.join(missing)}, which is not installed: "
            f"pip install {' '.join(missing)} (or {INSTALL})"
        )


# --------------------------------------------------------------------------------- exporting


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation and tracer warnings and progress prints are not the user's."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_onnx(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    from torch.export import Dim

    named = {0: Dim("batch"), 2: Dim("height"), 3: Dim("width")}  # the names in the graph
    unnamed = {0: Dim.DYNAMIC, 2: Dim.DYNAMIC, 3: Dim.DYNAMIC}  # what the exporter can prove
    for dims in (named, unnamed):
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(
                    module,
                    (example,),
                    str(path),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_shapes={INPUT_NAME: dims},
                    dynamo=True,
                    external_data=False,
                )
            return
        except Exception:  # a network whose sizes are constrained: the exporter's own symbols
            if dims is unnamed:
                raise


def export_torchscript(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(module, example)
        traced.save(str(path))


def export_openvino(module: nn.Module, path: Path, example: torch.Tensor) -> None:
    import openvino as ov

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        export_onnx(module, onnx_path, example)
        with _quiet():
            converted = ov.convert_model(str(onnx_path))
            ov.save_model(converted, str(path), compress_to_fp16=False)  # fp32 as exported


EXPORTERS = {"onnx": export_onnx, "openvino": export_openvino, "torchscript": export_torchscript}


# ----------------------------------------------------------------------------------- running


class OnnxModel:
    """An ONNX file in onnxruntime, called as the PyTorch network: logits tensors."""

    def __init__(self, path: Path, device: torch.device | None = None):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if device is not None and device.type == "cuda":
            available = ort.get_available_providers()
            if "CUDAExecutionProvider" in available:
                providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().float().contiguous().cpu().numpy()
        logits = self.session.run(None, {self.input: array})[0]
        return torch.from_numpy(logits).to(image.device)


class OpenVinoModel:
    """An OpenVINO IR (.xml + .bin) compiled for the CPU, called as the PyTorch network."""

    def __init__(self, path: Path, device: torch.device | None = None):
        import openvino as ov

        # fp32 throughout: CPUs with bf16 units would otherwise run in bf16
        self.compiled = ov.Core().compile_model(
            str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        array = image.detach().float().contiguous().cpu().numpy()
        logits = self.compiled([array])[0]
        return torch.from_numpy(np.array(logits)).to(image.device)


def load_model(fmt: str, path: Path, device: torch.device | None = None):
    """A callable image (N, 3, H, W) -> logits tensor for an exported file."""
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    if RUNTIME[fmt]:
        _require(fmt, (RUNTIME[fmt],), f"running an exported {fmt} file")
    try:
        if fmt == "onnx":
            return OnnxModel(path, device)
        if fmt == "openvino":
            return OpenVinoModel(path, device)
        with _quiet():
            model = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as err:  # a damaged or foreign file: the runtimes' errors are many lines
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{path} cannot be loaded as {fmt} ({first}): export it again with export.py"
        ) from None
    return model.to(device) if device is not None else model


def is_exported(path) -> bool:
    """Whether ckpt_path names an exported file (its JSON lies beside it) rather than a .ckpt;
    an .onnx or .xml file without its JSON fails in one line."""
    path = Path(str(path))
    if metadata_path(path).is_file():
        return True
    if path.suffix.lower() in (".onnx", ".xml") or path.name.endswith(".torchscript.pt"):
        if not path.is_file():
            raise FileNotFoundError(f"ckpt_path {path} does not exist")
        raise ConfigError(
            f"ckpt_path {path} has no {metadata_path(path).name} beside it: export it with "
            "export.py, which writes the class names, palette and eval mode there"
        )
    return False


def load_exported(path, network: str | None = None, device: torch.device | None = None):
    """(model, metadata) for an exported file: the model a callable returning logits."""
    path = Path(str(path))
    meta_file = metadata_path(path)
    try:
        meta = json.loads(meta_file.read_text())
        fmt = meta["format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(
            f"{meta_file} cannot be read as export.py's metadata ({one_line(err)}): export again"
        ) from None
    if not path.is_file():
        raise FileNotFoundError(f"ckpt_path {path} does not exist (its {meta_file.name} does)")
    if network and network != meta["network"]:
        raise ConfigError(
            f"eval.model={network}: {path.name} holds the {meta['network']}; export the "
            f"{network} with export.py eval.model={network}"
        )
    check_model_hash(path, meta)
    if meta.get("mean") != MEAN or meta.get("std") != STD:
        raise ConfigError(
            f"{meta_file.name}: mean {meta.get('mean')} / std {meta.get('std')} differ from "
            f"predict.py's normalisation (mean {MEAN}, std {STD})"
        )
    return load_model(fmt, path, device), meta


# ------------------------------------------------------------------------------------ parity


def parity(reference, exported, shapes, seed: int = 0) -> list[dict]:
    """Max abs difference of the logits and the argmax agreement of `exported` against
    `reference` on random normal images of each (N, H, W) shape."""
    generator = torch.Generator().manual_seed(seed)
    results = []
    for n, h, w in shapes:
        image = torch.randn((n, 3, h, w), generator=generator)
        with torch.no_grad():
            expected = reference(image).float()
            got = exported(image).float()
        if got.shape != expected.shape:
            raise FaultError(
                f"the exported model returned logits of shape {list(got.shape)} for an image "
                f"batch {[n, 3, h, w]}, PyTorch {list(expected.shape)}"
            )
        results.append(
            {
                "shape": [n, 3, h, w],
                "max_abs_diff": float((got - expected).abs().max()),
                "max_abs_logit": float(expected.abs().max()),  # the scale of that difference
                "argmax_agreement": float((got.argmax(1) == expected.argmax(1)).float().mean()),
            }
        )
    return results


# ------------------------------------------------------------------------------------ export


def _shapes(value) -> list[tuple[int, int, int]]:
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    try:
        shapes = [tuple(int(v) for v in shape) for shape in value]
    except (TypeError, ValueError):
        shapes = []
    if len(shapes) < 2 or not all(len(s) == 3 and min(s) > 0 for s in shapes):
        raise ConfigError(
            f"parity.shapes={value}: give two or more [N, H, W] sizes, e.g. "
            "parity.shapes=[[2,64,96],[1,80,80]]"
        )
    return shapes


def _output_path(cfg: DictConfig, fmt: str, network: str) -> Path:
    output = cfg.get("output")
    if output in (None, ""):
        ckpt = Path(str(cfg.ckpt_path))
        name = ckpt.stem + ("" if not cfg.eval.get("model") else f".{network}") + FORMATS[fmt]
        path = ckpt.with_name(name)
    else:
        path = Path(str(output)).expanduser()
    if fmt == "openvino" and path.suffix != ".xml":
        raise ConfigError(
            f"output={path}: OpenVINO writes an .xml (and a .bin beside it); give output=NAME.xml"
        )
    if path.is_dir():
        raise ConfigError(
            f"output {path} is a folder: give a file name, e.g. output=model{FORMATS[fmt]}"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"output {path}: its folder cannot be created ({err.strerror}); give a path you can "
            "write to"
        ) from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"output {path} cannot be written: give a path you can write to")
    return path


def run(cfg: DictConfig) -> dict:
    """Export the checkpoint's inference network; returns the metadata written beside it."""
    started = time.time()
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise ConfigError(f"format={fmt}: choose one of {', '.join(FORMATS)}")
    _require(fmt, NEEDS[fmt], f"format={fmt}")
    shapes = _shapes(cfg.parity.shapes)
    atol, min_agreement = float(cfg.parity.atol), float(cfg.parity.min_agreement)
    checkpoint = load_checkpoint(cfg.ckpt_path, cfg)
    state = checkpoint["semiseg"]
    network = cfg.eval.get("model") or state.get("eval_network", "student")
    path = _output_path(cfg, fmt, network)
    dataset_cfg = state["config"]["dataset"]
    change.refuse_pairs(dataset_cfg, "export.py")
    class_names = list(state["class_names"])
    palette = palettes.resolve(dataset_cfg.get("palette"), len(class_names))
    model = Logits(model_from_checkpoint(checkpoint, cfg.eval.get("model"))).eval()
    print(f"export: the {network} of {cfg.ckpt_path} as {fmt} to {path}")

    example = torch.randn(
        shapes[0][0], 3, *shapes[0][1:], generator=torch.Generator().manual_seed(1)
    )
    # Exported and checked under a temporary name beside the output: a failed export or parity
    # check leaves any earlier model and its JSON as they were.
    staged = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        results = _export_and_check(fmt, model, path, staged, example, shapes)
        _check_parity(results, path, atol, min_agreement)
        meta = _metadata(cfg, state, fmt, path, network, class_names, palette, results)
        meta["sha256"] = hashes(path, staged)
        publish(path, staged, meta)
    finally:
        for leftover in model_files(staged):
            leftover.unlink(missing_ok=True)
    print(f"done in {time.time() - started:.1f} s: {path} and {metadata_path(path).name}")
    return meta


def _export_and_check(fmt, model, path: Path, staged: Path, example, shapes) -> list[dict]:
    try:
        EXPORTERS[fmt](model, staged, example)
    except (ConfigError, FaultError):
        raise
    except OSError as err:
        raise ConfigError(f"output {path} cannot be written ({one_line(err)})") from None
    except Exception as err:  # the exporter's own errors are many lines
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FaultError(f"exporting to {fmt} failed: {type(err).__name__}: {first}") from err
    return parity(model, load_model(fmt, staged), shapes)


def _check_parity(results: list[dict], path: Path, atol: float, min_agreement: float) -> None:
    for result in results:
        print(
            f"parity {'x'.join(map(str, result['shape']))}: max |logits - PyTorch| "
            f"{result['max_abs_diff']:.2e} (logits up to {result['max_abs_logit']:.3g}), "
            f"argmax agreement {100 * result['argmax_agreement']:.3f}%"
        )
    worst = max(r["max_abs_diff"] for r in results)
    agreement = min(r["argmax_agreement"] for r in results)
    if not (worst <= atol and agreement >= min_agreement):  # NaN fails too
        kept = "the earlier export is kept" if path.exists() else "nothing written"
        raise FaultError(
            f"the exported {path.name} does not match PyTorch: max abs logit difference "
            f"{worst:.3g} (parity.atol {atol:g}), argmax agreement {agreement:.5f} "
            f"(parity.min_agreement {min_agreement:g}); {kept}"
        )


def _metadata(cfg, state, fmt, path, network, class_names, palette, results) -> dict:
    dataset_cfg = state["config"]["dataset"]
    return {
        "format": fmt,
        "file": path.name,
        "ckpt_path": str(cfg.ckpt_path),
        "network": network,
        "method": state["config"]["method"]["name"],
        "input": {"name": INPUT_NAME, "shape": ["N", 3, "H", "W"], "dtype": "float32"},
        "output": {"name": OUTPUT_NAME, "shape": ["N", len(class_names), "H", "W"]},
        "class_names": class_names,
        "palette": palette[: len(class_names)].tolist(),
        "mean": MEAN,
        "std": STD,
        "pixel_scale": "RGB / 255, then (x - mean) / std",
        "eval_mode": str(dataset_cfg.get("eval_mode", "original")),
        "crop_size": int(dataset_cfg["crop_size"]),
        "parity": {
            "atol": float(cfg.parity.atol),
            "min_agreement": float(cfg.parity.min_agreement),
            "results": results,
        },
        "torch_version": torch.__version__,
    }
