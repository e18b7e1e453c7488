"""The chosen images as Label Studio tasks, with the model's prediction as pre-annotations.

Label Studio imports a JSON list of tasks, each with a `data` object (the image URLs) and a
`predictions` list whose `result` regions it shows for correction ("Import pre-annotated data",
labelstud.io/guide/predictions). `config.xml` is the labeling interface those regions belong
to, to paste when creating the project. Per dataset kind:

- images: each predicted class region is a `polygonlabels` region: its outline traced at the
  half-pixel level (contourpy, marching squares on the class mask), points in percent of the
  image's width and height, as Label Studio's polygons are. A hole in a region comes out as a
  polygon of its own (Label Studio's polygons have no holes).
- ACDC slices: Label Studio shows image files, so each chosen slice is written as an 8-bit
  grayscale PNG (`images/<slice>.png`, the HDF5 image's 0..1 range scaled to 0..255) and each
  predicted class is one `brushlabels` region: the class mask pixel for pixel, holes included
  (the myocardium is a ring around the left ventricle, which a polygon cannot draw). `data.case`
  names the slice's case, shown above the image. `unit=case` exports every slice of the case.
- change pairs: one task per pair with both images (`data.image_a`, `data.image_b`, side by
  side in the interface) and the predicted change as a `brushlabels` region on image B.

Brush regions are Label Studio's RLE (`value.format: "rle"`, tags/brushlabels): the mask as an
RGBA image (H x W x 4, 255 in every channel of a masked pixel, 0 elsewhere; Label Studio reads
the alpha channel), flattened row by row and packed in the bit format of thi.ng's rle-pack:
a 32-bit value count, the word size minus one (5 bits), four run-length field sizes minus one
(4 bits each), then per run a repeat flag (1 bit), the index of its length field (2 bits), the
run length minus one, and the repeated 8-bit value; bits most significant first.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import contourpy
import numpy as np

FROM_NAME, TO_NAME = "label", "image"
PAIR_NAMES = ("image_a", "image_b")  # a pair's images; the change is drawn on B, the later one
WORD_BITS = 8
RUN_BITS = (3, 4, 8, 16)  # the run-length field sizes the header announces


# ---------------------------------------------------------------------------- polygons (images)
def polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The outlines of the True regions of `mask` (H, W), as (K, 2) arrays of (x, y) in pixel
    edge coordinates (pixel (r, c) spans x in [c, c + 1], y in [r, r + 1])."""
    padded = np.pad(mask.astype(np.float64), 1)  # regions at the border close too
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    # a padded index i is pixel centre i - 1, and a pixel's centre sits at its edge + 0.5
    return [line - 0.5 for line in lines if len(line) >= 4]


def region_base(kind: str, index: str, to_name: str, shape: tuple[int, int]) -> dict:
    h, w = shape
    return {
        "id": index,
        "from_name": FROM_NAME,
        "to_name": to_name,
        "type": kind,
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
    }


def task(image_url: str, prediction: np.ndarray, class_names: list[str], model: str) -> dict:
    """One image's task: the image and one prediction with a polygon per region of each class
    other than class 0 (the background, left unlabeled)."""
    h, w = prediction.shape
    regions = []
    for c in range(1, len(class_names)):
        for k, outline in enumerate(polygons(prediction == c)):
            points = [[round(100 * x / w, 3), round(100 * y / h, 3)] for x, y in outline[:-1]]
            region = region_base("polygonlabels", f"c{c}_{k}", TO_NAME, (h, w))
            region["value"] = {"points": points, "polygonlabels": [class_names[c]]}
            regions.append(region)
    return {
        "data": {TO_NAME: image_url},
        "predictions": [{"model_version": model, "result": regions}],
    }


# ---------------------------------------------------------------------------- brush (RLE)
def rle_encode(values: np.ndarray) -> list[int]:
    """Bytes of `values` (1-D, 0..255) in rle-pack's format, every run a repeat run (the
    shortest length field that holds it; runs over 2^16 split)."""
    values = np.asarray(values).ravel()
    fields = [f"{len(values):032b}", f"{WORD_BITS - 1:05b}"]
    fields += [f"{bits - 1:04b}" for bits in RUN_BITS]
    edges = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts, ends = np.r_[0, edges], np.r_[edges, len(values)]
    longest = 1 << RUN_BITS[-1]
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        value, left = int(values[start]), end - start
        while left:
            n = min(left, longest)
            size = next(k for k, bits in enumerate(RUN_BITS) if n - 1 < 1 << bits)
            fields.append(f"1{size:02b}{n - 1:0{RUN_BITS[size]}b}{value:0{WORD_BITS}b}")
            left -= n
    bits = "".join(fields)
    bits += "0" * (-len(bits) % 8)
    return [int(bits[i : i + 8], 2) for i in range(0, len(bits), 8)]


def brush_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's RLE of a boolean mask (H, W): RGBA, 255 in every channel where True."""
    rgba = np.repeat(np.where(mask, 255, 0).astype(np.uint8).ravel(), 4)
    return rle_encode(rgba)


def brush_regions(prediction: np.ndarray, class_names: list[str], to_name: str) -> list[dict]:
    """One `brushlabels` region per predicted class other than class 0, on image `to_name`."""
    regions = []
    for c in range(1, len(class_names)):
        mask = prediction == c
        if not mask.any():
            continue
        region = region_base("brushlabels", f"c{c}", to_name, prediction.shape)
        region["value"] = {"format": "rle", "rle": brush_rle(mask), "brushlabels": [class_names[c]]}
        regions.append(region)
    return regions


def slice_task(
    image_url: str, case: str, prediction: np.ndarray, class_names: list[str], model: str
) -> dict:
    """One ACDC slice's task: its PNG, its case, the predicted classes as brush regions."""
    return {
        "data": {TO_NAME: image_url, "case": case},
        "predictions": [
            {"model_version": model, "result": brush_regions(prediction, class_names, TO_NAME)}
        ],
    }


def pair_task(
    urls: tuple[str, str], prediction: np.ndarray, class_names: list[str], model: str
) -> dict:
    """One change pair's task: A and B, the predicted change as a brush region on B."""
    regions = brush_regions(prediction, class_names, PAIR_NAMES[1])
    return {
        "data": dict(zip(PAIR_NAMES, urls, strict=True)),
        "predictions": [{"model_version": model, "result": regions}],
    }


def slice_png(image: np.ndarray):
    """An ACDC slice (H, W, float 0..1) as an 8-bit grayscale PIL image."""
    from PIL import Image

    return Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8))


# ---------------------------------------------------------------------------- interface, files
KINDS = {"images": "images", "h5": "slices", "cd": "pairs"}  # the pool's format -> task kind


def labeling_config(class_names: list[str], kind: str = "images") -> str:
    """The labeling interface of `kind`'s tasks: images get polygons, slices and pairs a brush
    (pairs: A and B side by side, the brush on B)."""
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in class_names[1:])
    if kind == "images":
        return (
            "<View>\n"
            f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>\n'
            f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n'
            "  </PolygonLabels>\n"
            "</View>\n"
        )
    if kind == "slices":
        return (
            "<View>\n"
            '  <Header value="$case"/>\n'
            f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>\n'
            f'  <BrushLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n'
            "  </BrushLabels>\n"
            "</View>\n"
        )
    a, b = PAIR_NAMES
    return (
        "<View>\n"
        '  <Header value="A (before), B (after): paint the change on B"/>\n'
        '  <View style="display: grid; column-gap: 8px; grid-template: auto/1fr 1fr">\n'
        f'    <Image name="{a}" value="${a}"/>\n'
        f'    <Image name="{b}" value="${b}"/>\n'
        "  </View>\n"
        f'  <BrushLabels name="{FROM_NAME}" toName="{b}">\n{labels}\n  </BrushLabels>\n'
        "</View>\n"
    )


def write(folder: Path, tasks: list[dict], class_names: list[str], kind: str = "images") -> None:
    from semiseg.selection.outputs import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "tasks.json", (json.dumps(tasks, indent=1) + "\n").encode())
    write_atomic(folder / "config.xml", labeling_config(class_names, kind).encode())


def export(folder: Path, fmt, network, samples, class_names, model: str, url_prefix: str, device):
    """Predict each chosen sample as it was scored (selection/pool.py's format `fmt`) and write
    its task, the labeling interface and, for ACDC, the slices' PNGs into `folder`. Image and
    pair URLs are `url_prefix` + the file's path below the dataset root; a slice's PNG is
    `url_prefix` + `images/<slice>.png`, below `folder`."""
    import io

    import torch

    from semiseg.data import medical
    from semiseg.selection.outputs import write_atomic
    from semiseg.selection.pool import case_of

    kind = KINDS[fmt.name]
    if kind == "slices":
        (folder / "images").mkdir(parents=True, exist_ok=True)
    tasks = []
    for sample in samples:
        with torch.no_grad():
            probs = fmt.probabilities(network, fmt.load(sample).to(device))
        prediction = probs[0].argmax(0).cpu().numpy()
        if kind == "images":
            tasks.append(task(f"{url_prefix}{sample.image}", prediction, class_names, model))
        elif kind == "slices":
            name = f"{Path(sample.image).name.rsplit('.', 1)[0]}.png"
            image, _ = medical.read_h5(fmt.root / sample.image)
            png = io.BytesIO()
            slice_png(image).save(png, format="PNG")
            write_atomic(folder / "images" / name, png.getvalue())
            url = f"{url_prefix}images/{name}"
            tasks.append(slice_task(url, case_of(sample.image), prediction, class_names, model))
        else:
            urls = (f"{url_prefix}A/{sample.image}", f"{url_prefix}B/{sample.image}")
            tasks.append(pair_task(urls, prediction, class_names, model))
    write(folder, tasks, class_names, kind)
