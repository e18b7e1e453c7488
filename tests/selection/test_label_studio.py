"""Label Studio tasks: polygon outlines of the predicted regions of images, in percent of the
image; brush RLE masks of ACDC slices and change pairs (decoded back here to the prediction);
the labeling interfaces; the files export writes."""

import json
from xml.etree import ElementTree

import numpy as np
import pytest
import torch

from semiseg.selection import label_studio


def test_square_outline_is_on_the_pixel_edges():
    mask = np.zeros((6, 8), dtype=bool)
    mask[1:4, 2:5] = True  # rows 1..3, columns 2..4: edges y 1..4, x 2..5
    (outline,) = label_studio.polygons(mask)
    assert outline[:, 0].min() == 2 and outline[:, 0].max() == 5
    assert outline[:, 1].min() == 1 and outline[:, 1].max() == 4
    assert np.array_equal(outline[0], outline[-1])  # closed


def test_region_at_the_border_closes():
    mask = np.zeros((4, 4), dtype=bool)
    mask[:, :2] = True
    (outline,) = label_studio.polygons(mask)
    assert outline[:, 0].min() == 0 and outline[:, 1].min() == 0 and outline[:, 1].max() == 4


def test_task_has_one_polygon_per_region_of_each_foreground_class():
    prediction = np.zeros((10, 20), dtype=np.int64)
    prediction[0:5, 0:10] = 1  # x 0..10 of 20 -> 0..50 %, y 0..5 of 10 -> 0..50 %
    prediction[6:8, 12:14] = 2
    prediction[6:8, 16:18] = 2  # two regions of class 2
    task = label_studio.task("/data/x.png", prediction, ["bg", "a", "b"], "model")
    assert task["data"] == {"image": "/data/x.png"}
    regions = task["predictions"][0]["result"]
    assert [r["value"]["polygonlabels"] for r in regions] == [["a"], ["b"], ["b"]]
    points = np.array(regions[0]["value"]["points"])
    assert points[:, 0].min() == 0 and points[:, 0].max() == 50
    assert points[:, 1].min() == 0 and points[:, 1].max() == 50
    assert regions[0]["original_width"] == 20 and regions[0]["type"] == "polygonlabels"
    config = label_studio.labeling_config(["bg", "a", "b"])
    assert '<PolygonLabels name="label" toName="image">' in config and 'value="b"' in config


# ------------------------------------------------------------------ brush RLE (ACDC, pairs)
def rle_decode(data: list[int]) -> np.ndarray:
    """The values of an rle-pack byte list, read as its decoder reads them (thi.ng's rle-pack
    `decode`, which Label Studio's brush uses): a 32-bit count, the word size - 1 (5 bits), four
    run-length field sizes - 1 (4 bits each); then per run a repeat flag, a 2-bit field index,
    the run length - 1, and one word (repeat) or that many words (literal)."""
    bits = "".join(f"{byte:08b}" for byte in data)
    at = 0

    def read(n):
        nonlocal at
        at += n
        return int(bits[at - n : at], 2)

    count, word = read(32), read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, dtype=np.uint8)
    i = 0
    while i < count:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:j] = read(word)
        else:
            out[i:j] = [read(word) for _ in range(j - i)]
        i = j
    return out


def brush_mask(region: dict) -> np.ndarray:
    """The boolean mask of a brushlabels region, as Label Studio's converter reads it back: the
    alpha channel of the decoded H x W x 4 image."""
    h, w = region["original_height"], region["original_width"]
    assert region["type"] == "brushlabels" and region["value"]["format"] == "rle"
    return rle_decode(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def test_rle_bytes_of_a_two_pixel_mask_by_hand():
    # mask [no, yes] -> RGBA values 0 0 0 0 255 255 255 255 (8 values). Bits: count 8 (32 bits:
    # bytes 0 0 0 8); word size 8 - 1 = 00111; field sizes 3 4 8 16 - 1 = 0010 0011 0111 1111;
    # run of 4 zeros: 1 00 011 00000000; run of 4 x 255: 1 00 011 11111111; 7 zero bits pad:
    # 00111001 00011011 11111100 01100000 00010001 11111111 10000000
    assert label_studio.brush_rle(np.array([[False, True]])) == [0, 0, 0, 8] + [
        0b00111001, 0b00011011, 0b11111100, 0b01100000, 0b00010001, 0b11111111, 0b10000000,
    ]  # fmt: skip


def ring(shape=(9, 11)) -> np.ndarray:
    """A myocardium-like ring: a filled square minus its inside."""
    mask = np.zeros(shape, dtype=bool)
    mask[1:8, 2:9] = True
    mask[3:6, 4:7] = False
    return mask


def test_rle_round_trips_holes_long_runs_and_noise():
    rng = np.random.default_rng(0)
    sparse = np.zeros((200, 200), dtype=bool)  # 160000 values: runs over 2^16 are split
    sparse[150:152, 10:13] = True
    for mask in (ring(), sparse, rng.random((13, 17)) > 0.5, np.ones((3, 4), dtype=bool)):
        decoded = rle_decode(label_studio.brush_rle(mask)).reshape(*mask.shape, 4)
        assert np.array_equal(decoded[:, :, 3] > 0, mask)
        assert set(np.unique(decoded)) <= {0, 255}  # every channel 255 where masked


def parsed(task: dict) -> dict:
    """The task as Label Studio reads it: through JSON."""
    return json.loads(json.dumps(task))


def test_slice_task_has_one_brush_region_per_predicted_class():
    prediction = np.zeros((9, 11), dtype=np.int64)
    prediction[ring()] = 2  # myocardium, a ring around the left ventricle
    prediction[3:6, 4:7] = 3  # left ventricle inside it; no right ventricle predicted
    classes = ["background", "right_ventricle", "myocardium", "left_ventricle"]
    task = parsed(
        label_studio.slice_task("/x/s.png", "patient001_frame01", prediction, classes, "m")
    )
    assert task["data"] == {"image": "/x/s.png", "case": "patient001_frame01"}
    regions = task["predictions"][0]["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [["myocardium"], ["left_ventricle"]]
    for region, c in zip(regions, (2, 3), strict=True):
        assert (region["from_name"], region["to_name"]) == ("label", "image")
        assert region["original_width"] == 11 and region["original_height"] == 9
        assert np.array_equal(brush_mask(region), prediction == c)  # the ring keeps its hole


def test_pair_task_paints_the_predicted_change_on_image_b():
    prediction = np.zeros((6, 5), dtype=np.int64)
    prediction[1:3, 2:5] = 1
    prediction[5, 0] = 1
    task = parsed(label_studio.pair_task(("/d/A/p.png", "/d/B/p.png"), prediction,
                                         ["unchanged", "changed"], "m"))  # fmt: skip
    assert task["data"] == {"image_a": "/d/A/p.png", "image_b": "/d/B/p.png"}
    (region,) = task["predictions"][0]["result"]
    assert region["to_name"] == "image_b" and region["value"]["brushlabels"] == ["changed"]
    assert np.array_equal(brush_mask(region), prediction == 1)
    nothing = label_studio.pair_task(("a", "b"), np.zeros((6, 5), np.int64), ["u", "c"], "m")
    assert nothing["predictions"][0]["result"] == []  # no change predicted, no region


@pytest.mark.parametrize("kind", ["images", "slices", "pairs"])
def test_labeling_config_names_what_the_regions_refer_to(kind):
    root = ElementTree.fromstring(label_studio.labeling_config(["bg", "a", "b"], kind))
    images = {i.get("name"): i.get("value") for i in root.iter("Image")}
    control = next(root.iter("PolygonLabels" if kind == "images" else "BrushLabels"))
    assert [label.get("value") for label in control.iter("Label")] == ["a", "b"]
    assert control.get("name") == "label"
    if kind == "pairs":
        assert images == {"image_a": "$image_a", "image_b": "$image_b"}
        assert control.get("toName") == "image_b"
    else:
        assert images == {"image": "$image"} and control.get("toName") == "image"
    if kind == "slices":
        assert next(root.iter("Header")).get("value") == "$case"


def polygon_mask(regions: list[dict], label: str, shape) -> np.ndarray:
    """Pixels whose centre lies inside an odd number of the label's polygons (a hole is a
    polygon of its own inside its region)."""
    from matplotlib.path import Path

    h, w = shape
    ys, xs = np.mgrid[0:h, 0:w]
    centres = np.stack([(xs.ravel() + 0.5) * 100 / w, (ys.ravel() + 0.5) * 100 / h], axis=1)
    inside = np.zeros(h * w, dtype=int)
    for region in regions:
        if region["value"]["polygonlabels"] == [label]:
            inside += Path(region["value"]["points"]).contains_points(centres)
    return (inside % 2 == 1).reshape(h, w)


def test_polygons_round_trip_to_the_predicted_mask():
    prediction = np.zeros((9, 11), dtype=np.int64)
    prediction[ring()] = 1
    prediction[0, 0] = 2  # a single pixel: a diamond through its edges' midpoints
    prediction[7:9, 9:11] = 2
    task = parsed(label_studio.task("/x.png", prediction, ["bg", "a", "b"], "m"))
    regions = task["predictions"][0]["result"]
    for c, name in ((1, "a"), (2, "b")):
        assert np.array_equal(polygon_mask(regions, name, prediction.shape), prediction == c)


# ------------------------------------------------------------------ export, through the files
class Fixed(torch.nn.Module):
    """A network whose logits are `logits` (1, C, H, W) whatever its input."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits.expand(x.shape[0], -1, -1, -1)


def one_hot_logits(prediction: np.ndarray, classes: int) -> torch.Tensor:
    return (
        10.0
        * torch.nn.functional.one_hot(torch.from_numpy(prediction), classes)
        .permute(2, 0, 1)[None]
        .float()
    )


def test_export_writes_slice_pngs_and_brush_tasks(tmp_path):
    import h5py
    from PIL import Image

    from semiseg.data.splits import Sample
    from semiseg.selection.pool import SliceFormat

    root = tmp_path / "acdc"
    image = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    (root / "data" / "slices").mkdir(parents=True)
    with h5py.File(root / "data" / "slices" / "patient007_frame02_slice_4.h5", "w") as f:
        f.create_dataset("image", data=image)
        f.create_dataset("label", data=np.zeros((8, 8), np.uint8))
    prediction = np.zeros((8, 8), dtype=np.int64)
    prediction[ring((8, 8))[:, :8]] = 2
    prediction[2:5, 3:6] = 1
    network = Fixed(one_hot_logits(prediction, 3))
    fmt = SliceFormat(root, "volume", 8, 3)  # crop 8: the slice is predicted at its own size
    out = tmp_path / "label_studio"
    samples = [Sample("data/slices/patient007_frame02_slice_4.h5", None)]
    label_studio.export(out, fmt, network, samples, ["bg", "a", "b"], "ckpt", "/p?d=", "cpu")

    (task,) = json.loads((out / "tasks.json").read_text())
    assert task["data"] == {"image": "/p?d=images/patient007_frame02_slice_4.png",
                            "case": "patient007_frame02"}  # fmt: skip
    png = np.asarray(Image.open(out / "images" / "patient007_frame02_slice_4.png"))
    assert png.dtype == np.uint8 and np.array_equal(png, np.round(image * 255).astype(np.uint8))
    regions = task["predictions"][0]["result"]
    assert [r["value"]["brushlabels"] for r in regions] == [["a"], ["b"]]
    for region, c in zip(regions, (1, 2), strict=True):
        assert np.array_equal(brush_mask(region), prediction == c)
    assert "<BrushLabels" in (out / "config.xml").read_text()


def test_export_writes_pair_tasks_with_both_images(tmp_path):
    from PIL import Image

    from semiseg.data.splits import Sample
    from semiseg.selection.pool import PairFormat

    root = tmp_path / "cd"
    for part in ("A", "B"):
        (root / part).mkdir(parents=True)
        Image.fromarray(np.full((6, 7, 3), 90, np.uint8)).save(root / part / "p1.png")
    prediction = np.zeros((6, 7), dtype=np.int64)
    prediction[2:4, 1:6] = 1
    fmt = PairFormat(root, "original", 6, 2)
    out = tmp_path / "label_studio"
    label_studio.export(out, fmt, Fixed(one_hot_logits(prediction, 2)), [Sample("p1.png", None)],
                        ["unchanged", "changed"], "ckpt", "/p?d=", "cpu")  # fmt: skip
    (task,) = json.loads((out / "tasks.json").read_text())
    assert task["data"] == {"image_a": "/p?d=A/p1.png", "image_b": "/p?d=B/p1.png"}
    (region,) = task["predictions"][0]["result"]
    assert region["to_name"] == "image_b" and np.array_equal(brush_mask(region), prediction == 1)
    assert 'toName="image_b"' in (out / "config.xml").read_text()
