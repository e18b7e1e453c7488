"""model.pretrained=imagenet without the public file: the weights timm and torchvision publish,
read from fake hub caches (randomly initialised models written in each hub's layout); never the
network."""

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from semiseg.errors import ConfigError
from semiseg.models import hub_weights
from semiseg.models.deeplabv3plus import DeepLabV3Plus
from semiseg.models.encoders import build_encoder, describe_init, init_line, load_init

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Empty hub caches of this test's own, offline."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def fill_torchvision(arch: str) -> dict:
    """torchvision's cache file of `arch`'s ImageNet weights, as torch.hub stores it."""
    model = torchvision.models.get_model(arch, weights=None)
    name = torchvision.models.get_model_weights(arch).IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    folder = hub_weights.torch_cache()
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / name)
    return model.state_dict()


def fill_timm(name: str) -> dict:
    """The Hugging Face hub cache of timm/<name>: refs/main and the snapshot's safetensors."""
    model = timm.create_model(name.split(".")[0], pretrained=False)
    repo = hub_weights.hf_cache() / f"models--timm--{name}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    (repo / "snapshots" / REVISION).mkdir(parents=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, repo / "snapshots" / REVISION / "model.safetensors")
    return state


def test_offline_with_neither_names_both_fixes(caches):
    with pytest.raises(ConfigError) as err:
        describe_init("resnet101", "imagenet", caches / "pretrained")
    message = str(err.value)
    assert "\n" not in message
    assert f"no ImageNet weights for resnet101 at {caches / 'pretrained' / 'resnet101.pth'}" in (
        message
    )
    assert str(hub_weights.hf_cache()) in message and str(hub_weights.torch_cache()) in message
    assert "timm/resnet101s.gluon_in1k" in message and "HF_HUB_OFFLINE=0" in message
    assert "model.pretrained=scratch" in message


def test_an_encoder_nobody_publishes_keeps_the_public_file_message(caches):
    assert hub_weights.candidates("xception65") == []
    with pytest.raises(ConfigError, match="xception.pth") as err:
        describe_init("xception65", "imagenet", caches)
    assert "hub" not in str(err.value)


def test_candidates_put_the_full_layout_first():
    deep = [w.name for w in hub_weights.candidates("resnet101", deep_stem=True)]
    assert deep[0] == "timm/resnet101s.gluon_in1k"
    assert "resnet101" in deep  # torchvision's, after timm's
    plain = hub_weights.candidates("resnet101", deep_stem=False)
    assert plain[0].name == "timm/resnet101.a1h_in1k"
    assert {w.hub for w in hub_weights.candidates("smp:resnet34")} == {"torchvision"}


def test_torchvision_cache_maps_all_but_the_deep_stem(caches):
    published = fill_torchvision("resnet18")
    init = describe_init("resnet18", "imagenet", caches / "pretrained")
    assert init["backbone"] == "imagenet" and init["hub"] == "torchvision"
    assert init["weights"] == "torchvision resnet18 (resnet18-f37072fd.pth)"
    assert init["file"].startswith(str(caches / "torch")) and len(init["sha256"]) == 64
    assert init["paper_file"] == str(caches / "pretrained" / "resnet18.pth")
    # the deep stem (64-64-128) and the 128-channel input of layer1's first block
    assert init["random"] == [
        "conv1.0",
        "conv1.1",
        "conv1.3",
        "conv1.4",
        "conv1.6",
        "bn1",
        "layer1.0.conv1",
        "layer1.0.downsample.0",
        "layer1.0.downsample.1",
    ]
    line = init_line("resnet18", init)
    assert "\n" not in line and "left random" in line and "deep stem" in line
    assert "model.deep_stem=false" in line and init["paper_file"] in line

    encoder = build_encoder("resnet18")
    load_init(encoder, "resnet18", "imagenet", caches / "pretrained")
    state = encoder.state_dict()
    loaded = [k for k in state if k in published and state[k].shape == published[k].shape]
    assert init["tensors_loaded"] == len([k for k in loaded if "num_batches" not in k]) > 90
    for key in loaded:
        assert torch.equal(state[key], published[key]), key
    assert "layer4.1.conv2.weight" in loaded and "conv1.0.weight" not in loaded


def test_torchvision_cache_maps_every_tensor_of_a_7x7_stem(caches):
    published = fill_torchvision("resnet18")
    init = describe_init("resnet18", "imagenet", caches, deep_stem=False)
    assert init["random"] == [] and "every tensor loaded" in init_line("resnet18", init)
    model = DeepLabV3Plus(
        num_classes=2,
        encoder="resnet18",
        pretrained="imagenet",
        pretrained_dir=str(caches),
        deep_stem=False,
    )
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, published[key]), key


def test_timm_cache_with_the_deep_stem_maps_every_tensor(caches):
    published = fill_timm("resnet50s.gluon_in1k")
    init = describe_init("resnet50", "imagenet", caches)
    assert init["weights"] == "timm/resnet50s.gluon_in1k" and init["hub"] == "timm"
    assert init["random"] == []
    assert "models--timm--resnet50s.gluon_in1k" in init["file"]
    line = init_line("resnet50", init)
    assert line.startswith("backbone resnet50: imagenet, timm/resnet50s.gluon_in1k from the timm")
    assert "every tensor loaded" in line and "public UniMatch file" in line
    encoder = build_encoder("resnet50")
    load_init(encoder, "resnet50", "imagenet", caches)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, published[key]), key


def test_the_public_file_comes_first(caches):
    fill_torchvision("resnet18")
    (caches / "resnet18.pth").write_bytes(b"abc")
    init = describe_init("resnet18", "imagenet", caches)
    assert init == {
        "backbone": "imagenet",
        "file": str(caches / "resnet18.pth"),
        "sha256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    }


def test_online_downloads_the_first_candidate_into_the_cache(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    fetched = []

    def fake_download(weights):  # what hf_hub_download would leave in the cache
        fetched.append(weights.name)
        fill_timm(weights.arch)
        return hub_weights.cached_file(weights)

    monkeypatch.setattr(hub_weights, "download", fake_download)
    init = describe_init("resnet18", "imagenet", caches, deep_stem=False)
    assert fetched == ["timm/resnet18.a1_in1k"]
    assert init["weights"] == "timm/resnet18.a1_in1k" and init["random"] == []
    describe_init("resnet18", "imagenet", caches, deep_stem=False)
    assert fetched == ["timm/resnet18.a1_in1k"]  # the second run reads the cache


def test_a_failed_download_is_one_line(caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")

    def no_network(weights):
        raise OSError("Temporary failure in name resolution\nmore")

    monkeypatch.setattr(hub_weights, "download", no_network)
    with pytest.raises(ConfigError, match="downloading timm/resnet18.a1_in1k failed") as err:
        describe_init("resnet18", "imagenet", caches, deep_stem=False)
    assert "\n" not in str(err.value)


@pytest.mark.slow  # one tiny train.py run
def test_train_py_says_which_weights_and_records_them(toy_root, tmp_path):
    import json

    from cli import train_on_toy

    torch_home = tmp_path / "torch"
    name = torchvision.models.get_model_weights("resnet18").IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    model = torchvision.models.get_model("resnet18", weights=None)
    torch.save(model.state_dict(), torch_home / "hub" / "checkpoints" / name)
    proc = train_on_toy(
        toy_root,
        "model.pretrained=imagenet",
        f"model.pretrained_dir={tmp_path / 'pretrained'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        env={"TORCH_HOME": str(torch_home), "HF_HOME": str(tmp_path / "hf")},
    )
    line = next(x for x in proc.stdout.splitlines() if x.startswith("backbone resnet18"))
    assert line.startswith(
        f"backbone resnet18: imagenet, torchvision resnet18 ({name}) from the torchvision cache"
    )
    assert f"public UniMatch file at {tmp_path / 'pretrained' / 'resnet18.pth'}" in line
    init = json.loads((tmp_path / "run" / "results.json").read_text())["init"]
    assert init["weights"] == f"torchvision resnet18 ({name})" and init["hub"] == "torchvision"
    assert init["file"] == str(torch_home / "hub" / "checkpoints" / name)
    assert init["random"][0] == "conv1.0" and init["tensors_loaded"] > 90
