"""Weight sources: random, local files, the torchvision cache; validation and safe loading."""

import hashlib
import urllib.error

import pytest
import torch

import vggfeat.weights as weights_mod
from vggfeat.errors import WeightsError
from vggfeat.nets import VGG
from vggfeat.weights import PREPROCESS, load_weights, save_weights

W = 1 / 16


def _state(net="D", seed=0):
    torch.manual_seed(seed)
    return VGG(net, width=W).state_dict()


def test_random_is_labelled_and_seeded():
    a = load_weights("random", "D", seed=3, width=W)
    b = load_weights("random", "D", seed=3, width=W)
    c = load_weights("random", "D", seed=4, width=W)
    assert a.label.startswith("random") and a.sha256 is None
    assert torch.equal(a.state_dict["features.0.weight"], b.state_dict["features.0.weight"])
    assert not torch.equal(a.state_dict["features.0.weight"], c.state_dict["features.0.weight"])
    assert a.provenance()["label"].startswith("random")


def test_plain_state_dict_means_torchvision_unless_overridden(tmp_path):
    path = tmp_path / "d.pth"
    torch.save(_state(), path)
    w = load_weights(str(path), "vgg16")
    assert w.preprocess == PREPROCESS["torchvision"] and w.width == W
    assert w.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert load_weights(str(path), "D", preprocess="caffe").preprocess == PREPROCESS["caffe"]
    model = w.build()
    assert torch.equal(model.features[0].weight, _state()["features.0.weight"])


def test_training_checkpoint_with_ddp_prefix(tmp_path):
    path = tmp_path / "ckpt.pt"
    state = {f"module.{k}": v for k, v in _state().items()}
    torch.save({"state_dict": state, "net": "D", "epoch": 3, "preprocess": "caffe"}, path)
    w = load_weights(str(path), "D")
    assert w.preprocess.name == "caffe" and w.origin["epoch"] == 3
    torch.save({"state_dict": state, "net": "E"}, path)
    with pytest.raises(WeightsError, match="net E, not net D"):
        load_weights(str(path), "D")


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"x": _Evil()}, path)
    with pytest.raises(WeightsError, match="pickled code is refused"):
        load_weights(str(path), "D")


def test_missing_classifier_nan_and_wrong_net_are_refused(tmp_path):
    features_only = {k: v for k, v in _state().items() if k.startswith("features.")}
    torch.save(features_only, tmp_path / "features.pth")
    with pytest.raises(WeightsError, match="no classifier.*IMAGENET1K_FEATURES"):
        load_weights(str(tmp_path / "features.pth"), "D")

    nan = _state()
    nan["classifier.3.weight"][0, 0] = float("nan")
    torch.save(nan, tmp_path / "nan.pth")
    with pytest.raises(WeightsError, match="classifier.3.weight holds NaN"):
        load_weights(str(tmp_path / "nan.pth"), "D")

    torch.save(_state("E"), tmp_path / "e.pth")
    with pytest.raises(WeightsError, match="unexpected keys.*check --net"):
        load_weights(str(tmp_path / "e.pth"), "D")

    bad = _state()
    bad["features.2.weight"] = torch.zeros(4, 4, 5, 5)
    torch.save(bad, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"features.2.weight has shape \(4, 4, 5, 5\)"):
        load_weights(str(tmp_path / "shape.pth"), "D")

    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(str(tmp_path / "nope.pth"), "D")


def test_safetensors_round_trip_carries_preprocessing(tmp_path):
    path = tmp_path / "w.safetensors"
    digest = save_weights(path, _state(), "D", PREPROCESS["caffe"], origin={"from": "test"})
    w = load_weights(str(path), "D")
    assert w.preprocess == PREPROCESS["caffe"] and w.origin == {"from": "test"}
    assert w.sha256 == digest
    assert torch.equal(w.state_dict["classifier.3.bias"], _state()["classifier.3.bias"])
    with pytest.raises(WeightsError, match="for net D, not net E"):
        load_weights(str(path), "E")


def test_imagenet_uses_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url, cached = weights_mod.imagenet_file("D")
    assert cached == tmp_path / "hub" / "checkpoints" / "vgg16-397923af.pth"
    assert url.endswith("vgg16-397923af.pth")
    cached.parent.mkdir(parents=True)
    torch.save(_state(), cached)

    def no_network(*args, **kwargs):
        raise AssertionError("a cached file must not be downloaded")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    w = load_weights("imagenet", "vgg16")
    assert "IMAGENET1K_V1" in w.label and w.preprocess == PREPROCESS["torchvision"]
    assert w.sha256 == hashlib.sha256(cached.read_bytes()).hexdigest()


def test_imagenet_downloads_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    source = tmp_path / "remote.pth"
    torch.save(_state("E"), source)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        dst_path = type(source)(dst)
        dst_path.write_bytes(source.read_bytes())

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    w = load_weights("imagenet", "E")
    assert calls and calls[0][0].endswith("vgg19-dcbb9e9d.pth") and calls[0][1] == "dcbb9e9d"
    assert w.net == "E"


def test_imagenet_offline_names_file_and_place(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsError) as err:
        load_weights("imagenet", "D")
    message = str(err.value)
    assert "vgg16-397923af.pth" in message and str(tmp_path / "hub" / "checkpoints") in message
    assert "\n" not in message
    with pytest.raises(WeightsError, match="no ImageNet weights for net C"):
        load_weights("imagenet", "C")


def test_infer_net_from_keys_or_record(tmp_path):
    from vggfeat.weights import infer_net

    torch.save(_state("E"), tmp_path / "e.pth")
    torch.save({"state_dict": _state("D"), "net": "vgg16"}, tmp_path / "d.pt")
    save_weights(tmp_path / "a.safetensors", _state("A"), "A", PREPROCESS["caffe"])
    assert infer_net(tmp_path / "e.pth") == "E" and infer_net(tmp_path / "d.pt") == "D"
    assert infer_net(tmp_path / "a.safetensors") == "A"
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(WeightsError):
        infer_net(tmp_path / "x.pth")
