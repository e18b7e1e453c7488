"""experiment=unimatch_v2_{pascal,cityscapes,ade20k,coco} against the public UniMatch V2 configs
(configs/*.yaml, scripts/train.sh: 4 GPUs), resolved as train.py composes them."""

import pytest

from semiseg.tools import recipes


@pytest.fixture(scope="module")
def rows():
    result = []
    for experiment, splits in recipes.UNIMATCH_V2_EXPERIMENTS.items():
        cfg = recipes.compose_experiment(experiment)
        result += [(recipes.resolve(experiment, split, cfg), cfg) for split in splits]
    return result


def test_recipes_match_the_public_configs(rows):
    for row, _ in rows:
        ref, where = row.reference, (row.experiment, row.split)
        assert row.backbone == ref.backbone and row.weights == ref.weights, where
        assert row.crop == ref.crop and row.crop % 14 == 0, where
        assert row.batch * 4 == ref.batch * ref.gpus, where
        assert row.lr_4 == pytest.approx(ref.lr), where
        assert row.lr_1 == pytest.approx(ref.lr / 4), where
        assert row.epochs == ref.epochs, where
        assert row.steps_4 == row.reference_steps, where
        for key, ours, theirs in row.checks:
            assert ours == pytest.approx(theirs), (*where, key)


def test_optimiser_model_and_evaluation(rows):
    for row, cfg in rows:
        where = row.experiment
        assert cfg.model._target_ == "semiseg.models.dpt.DPT", where
        assert cfg.method._target_ == "semiseg.methods.unimatch_v2.UniMatchV2", where
        assert cfg.optim.name == "adamw" and list(cfg.optim.betas) == [0.9, 0.999], where
        assert cfg.optim.poly_power == 0.9 and cfg.model.pretrained == "imagenet", where
        assert cfg.method.mix_partner == "flip" and cfg.method.complementary_dropout, where
        assert not cfg.model.freeze_backbone, where
        city = row.experiment.endswith("cityscapes")
        assert cfg.eval.mode == ("sliding_window" if city else "original"), where
        assert cfg.dataset.labeled_loss.name == ("ohem" if city else "ce"), where
    city = recipes.compose_experiment("unimatch_v2_cityscapes")
    assert city.eval.window_border == "align"  # its sliding window ends at the border


def test_steps_worked_by_hand(rows):
    by_key = {(r.experiment, r.split): r for r, _ in rows}
    # Pascal 92: 10,490 unlabeled: ceil(10490 / 4) = 2623 per GPU, // 4 = 655 x 60 = 39,300
    assert by_key[("unimatch_v2_pascal", "92")].steps_4 == 39_300
    # Cityscapes 1/16 (186): 2789 unlabeled: ceil / 4 = 698, // 2 = 349 x 180 = 62,820
    assert by_key[("unimatch_v2_cityscapes", "1/16")].steps_4 == 62_820
    # COCO 1/512 (232): 118,055 unlabeled: ceil / 4 = 29,514, // 4 = 7378 x 20 = 147,560
    assert by_key[("unimatch_v2_coco", "1/512")].steps_4 == 147_560


def test_the_recipe_table_has_the_v2_rows():
    """The table of docs/recipes.md (checked against the docs by tests/test_recipes.py) shows
    every V2 split with its public values beside."""
    assert set(recipes.UNIMATCH_V2_EXPERIMENTS) <= set(recipes.EXPERIMENTS)
    assert not set(recipes.UNIMATCH_V2_EXPERIMENTS) & set(recipes.OUTSIDE_TABLE)
    rows = [r for r, _ in _rows_of("unimatch_v2_pascal")]
    table = recipes.markdown_table(rows)
    assert "| unimatch_v2_pascal | 92 | dinov2_small (dinov2_small.pth) | 518 | 4 |" in table
    assert "dinov2_small, 518, 4 x 4, 5e-06, 60, 39,300 |" in table


def _rows_of(experiment):
    cfg = recipes.compose_experiment(experiment)
    return [(recipes.resolve(experiment, s, cfg), cfg) for s in recipes.EXPERIMENTS[experiment]]
