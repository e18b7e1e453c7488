"""Label Studio tasks: polygon outlines of the predicted regions, in percent of the image."""

import numpy as np

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
