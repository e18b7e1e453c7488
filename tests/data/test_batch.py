"""The typed training batch: what the loaders' dicts become, field by field."""

import pytest
import torch

from semiseg.data.batch import TrainBatch, Unlabeled


def _t(*values):
    return torch.tensor(values)


def _loader_dicts():
    labeled = {"image": _t(1.0, 2.0), "mask": _t(0, 1)}
    unlabeled = {
        "weak": _t(10.0, 11.0),
        "ignore": _t(0, 255),
        "gt": _t(255, 255),
        "strong1": _t(20.0, 21.0),
        "box1": _t(True, False),
        "mix_weak": _t(30.0, 31.0),
        "mix_ignore": _t(255, 0),
        "mix_strong1": _t(40.0, 41.0),
    }
    return {"labeled": labeled, "unlabeled": unlabeled}


def test_the_loaders_keys_land_in_their_fields_and_the_mix_keys_in_the_partner():
    batch = TrainBatch.parse(_loader_dicts())
    assert batch.labeled.mask.tolist() == [0, 1]
    u = batch.unlabeled
    assert u.weak.tolist() == [10.0, 11.0] and u.box1.tolist() == [True, False]
    assert u.strong2 is None and u.box2 is None
    assert u.mix.weak.tolist() == [30.0, 31.0] and u.mix.ignore.tolist() == [255, 0]
    assert u.mix.strong1.tolist() == [40.0, 41.0] and u.mix.mix is None
    assert TrainBatch.parse(batch) is batch  # parsing twice changes nothing


def test_a_supervised_loader_yields_the_labeled_stream_alone():
    batch = TrainBatch.parse({"image": _t(1.0), "mask": _t(3)})
    assert batch.unlabeled is None and batch.labeled.mask.tolist() == [3]


def test_an_unknown_key_is_named():
    raw = _loader_dicts()
    raw["unlabeled"]["strong3"] = _t(0.0, 0.0)
    with pytest.raises(KeyError, match="strong3"):
        TrainBatch.parse(raw)


def test_a_missing_strong_view_says_so():
    u = TrainBatch.parse(_loader_dicts()).unlabeled
    assert u.strong(1).tolist() == [20.0, 21.0]
    with pytest.raises(ValueError, match="no strong view 2"):
        u.strong(2)


def test_flipped_reverses_the_views_and_drops_boxes_and_gt():
    f = TrainBatch.parse(_loader_dicts()).unlabeled.flipped()
    assert f.weak.tolist() == [11.0, 10.0] and f.ignore.tolist() == [255, 0]
    assert f.strong1.tolist() == [21.0, 20.0]
    assert f.box1 is None and f.gt is None and f.mix is None


def test_chunk_cuts_every_tensor_the_partner_included():
    raw = {
        "labeled": {"image": torch.arange(4.0), "mask": torch.arange(4)},
        "unlabeled": {
            "weak": torch.arange(8.0),
            "ignore": torch.zeros(8),
            "mix_weak": torch.arange(8.0) + 100,
            "mix_ignore": torch.zeros(8),
        },
    }
    first, second = TrainBatch.parse(raw).chunk(2)
    assert first.labeled.image.tolist() == [0.0, 1.0] and second.labeled.mask.tolist() == [2, 3]
    assert second.unlabeled.weak.tolist() == [4.0, 5.0, 6.0, 7.0]
    assert second.unlabeled.mix.weak.tolist() == [104.0, 105.0, 106.0, 107.0]
    assert isinstance(second.unlabeled, Unlabeled) and second.unlabeled.gt is None
