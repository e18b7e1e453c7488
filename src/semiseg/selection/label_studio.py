"""The chosen images as Label Studio tasks, with the model's prediction as pre-annotations.

Label Studio imports a JSON list of tasks, each with a `data` object (the image's URL) and a
`predictions` list whose `result` regions it shows for correction ("Import pre-annotated data",
labelstud.io/guide/predictions). Each predicted class region is a `polygonlabels` region: its
outline traced at the half-pixel level (contourpy, marching squares on the class mask), points
in percent of the image's width and height, as Label Studio's polygons are. A hole in a region
comes out as a polygon of its own. `config.xml` is the labeling interface those regions belong
to (a PolygonLabels tag `label` on the Image tag `image`), to paste when creating the project.
"""

from __future__ import annotations

import json
from pathlib import Path
from xml.sax.saxutils import quoteattr

import contourpy
import numpy as np

FROM_NAME, TO_NAME = "label", "image"


def polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The outlines of the True regions of `mask` (H, W), as (K, 2) arrays of (x, y) in pixel
    edge coordinates (pixel (r, c) spans x in [c, c + 1], y in [r, r + 1])."""
    padded = np.pad(mask.astype(np.float64), 1)  # regions at the border close too
    lines = contourpy.contour_generator(z=padded, line_type="Separate").lines(0.5)
    # a padded index i is pixel centre i - 1, and a pixel's centre sits at its edge + 0.5
    return [line - 0.5 for line in lines if len(line) >= 4]


def task(image_url: str, prediction: np.ndarray, class_names: list[str], model: str) -> dict:
    """One task: the image and one prediction with a polygon per region of each class other
    than class 0 (the background, left unlabeled)."""
    h, w = prediction.shape
    regions = []
    for c in range(1, len(class_names)):
        for k, outline in enumerate(polygons(prediction == c)):
            points = [[round(100 * x / w, 3), round(100 * y / h, 3)] for x, y in outline[:-1]]
            regions.append(
                {
                    "id": f"c{c}_{k}",
                    "from_name": FROM_NAME,
                    "to_name": TO_NAME,
                    "type": "polygonlabels",
                    "original_width": w,
                    "original_height": h,
                    "image_rotation": 0,
                    "value": {"points": points, "polygonlabels": [class_names[c]]},
                }
            )
    return {
        "data": {TO_NAME: image_url},
        "predictions": [{"model_version": model, "result": regions}],
    }


def labeling_config(class_names: list[str]) -> str:
    labels = "\n".join(f"    <Label value={quoteattr(n)}/>" for n in class_names[1:])
    return (
        "<View>\n"
        f'  <Image name="{TO_NAME}" value="${TO_NAME}"/>\n'
        f'  <PolygonLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{labels}\n  </PolygonLabels>\n'
        "</View>\n"
    )


def write(folder: Path, tasks: list[dict], class_names: list[str]) -> None:
    from semiseg.selection.outputs import write_atomic

    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / "tasks.json", (json.dumps(tasks, indent=1) + "\n").encode())
    write_atomic(folder / "config.xml", labeling_config(class_names).encode())
