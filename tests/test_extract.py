"""The dense engine: exact mixed-size batching, flips, both nets from one decode, precision."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_bad_images
from PIL import Image

from vggfeat.errors import VggfeatError
from vggfeat.extract import ExtractConfig, Extractor
from vggfeat.images import decode_image

SIZES = [(240, 320), (320, 240), (224, 224), (256, 300), (230, 400), (300, 260)]


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _config(**kwargs):
    base = dict(scales=(224, 256), device="cpu", workers=0)
    base.update(kwargs)
    return ExtractConfig(**base)


def _max_rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_batched_equals_one_at_a_time(tiny_weights):
    w = tiny_weights("D", seed=1)
    batched = Extractor([w], _config(batch_size=8)).describe(_images())
    single = Extractor([w], _config(batch_size=1)).describe(_images())
    for key in single:
        assert batched[key].shape == (len(SIZES), 256)
        assert _max_rel(batched[key], single[key]) <= 1e-5


def _reference_descriptor(w, image, q, flip=True):
    """Independent path: PIL resize, torchvision normalisation by hand, F.conv2d per layer."""
    h, wd = image.shape[:2]
    size = (q, round(wd * q / h)) if h <= wd else (round(h * q / wd), q)
    pil = Image.fromarray(image).resize(size[::-1], Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.array(pil)).permute(2, 0, 1)[None].float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = (x - mean) / std
    sd = w.state_dict
    model = w.build()

    def fc7(inp):
        feat = model.features(inp)
        fc6 = F.relu(F.conv2d(feat, sd["classifier.0.weight"].reshape(-1, feat.shape[1], 7, 7),
                              sd["classifier.0.bias"]))  # fmt: skip
        out = F.relu(F.linear(fc6.permute(0, 2, 3, 1), sd["classifier.3.weight"],
                              sd["classifier.3.bias"]))  # fmt: skip
        return out.mean(dim=(1, 2))[0]

    with torch.no_grad():
        vec = fc7(x)
        if flip:
            vec = (vec + fc7(x.flip(-1))) / 2
    return vec.numpy()


@pytest.mark.parametrize("flip", [True, False])
def test_descriptor_matches_independent_reference(tiny_weights, flip):
    w = tiny_weights("D", seed=2)
    images = _images(3)[:3]
    out = Extractor([w], _config(scales=(256,), flip=flip)).describe(images)[("D", 256)]
    for i, image in enumerate(images):
        ref = _reference_descriptor(w, image, 256, flip)
        assert _max_rel(out[i], ref) <= 1e-5


def test_mirrored_image_gives_same_descriptor_with_flip(tiny_weights):
    w = tiny_weights("E", seed=3)
    images = _images(4)
    mirrored = [im[:, ::-1].copy() for im in images]
    ex = Extractor([w], _config(flip=True))
    a, b = ex.describe(images), ex.describe(mirrored)
    for key in a:
        assert _max_rel(a[key], b[key]) <= 1e-5
    no_flip = Extractor([w], _config(flip=False))
    assert (
        _max_rel(no_flip.describe(images)[("E", 256)], no_flip.describe(mirrored)[("E", 256)])
        > 1e-3
    )


def test_two_nets_from_one_decode_equal_separate_runs(tiny_weights):
    d, e = tiny_weights("D", seed=5), tiny_weights("E", seed=6)
    both = Extractor([d, e], _config()).describe(_images())
    alone = {
        **Extractor([d], _config()).describe(_images()),
        **Extractor([e], _config()).describe(_images()),
    }
    assert set(both) == {("D", 224), ("D", 256), ("E", 224), ("E", 256)}
    for key in both:
        assert _max_rel(both[key], alone[key]) <= 1e-6


@pytest.mark.parametrize("precision,tol", [("bf16", 5e-2), ("fp16", 5e-2)])
def test_reduced_precision_is_close(tiny_weights, precision, tol):
    w = tiny_weights("D", seed=7)
    ref = Extractor([w], _config()).describe(_images())[("D", 256)]
    low = Extractor([w], _config(precision=precision)).describe(_images())[("D", 256)]
    assert low.dtype == np.float32 and 0 < _max_rel(low, ref) <= tol


@pytest.mark.parametrize("layer,dim", [("fc6", 256), ("pool5", 32)])
def test_other_layers(tiny_weights, layer, dim):
    ex = Extractor([tiny_weights("D")], _config(layer=layer))
    out = ex.describe(_images())[("D", 224)]
    assert out.shape == (len(SIZES), dim) and ex.settings()["layer"] == layer
    assert (out >= 0).all() and np.isfinite(out).all()


def test_run_records_bad_files_and_goes_on(tiny_weights, images, tmp_path):
    corpus = write_bad_images(tmp_path / "bad")
    samples = [(p.name, str(p)) for p in images] + [(n, str(tmp_path / "bad" / n)) for n in corpus]
    samples.insert(2, ("missing.jpg", str(tmp_path / "missing.jpg")))
    rows = []
    ex = Extractor([tiny_weights("D")], _config(batch_size=2, workers=1))
    summary = ex.run(samples, rows.append, progress=False)
    assert [r.id for r in rows] == [s[0] for s in samples]  # input order kept
    failed = {r.id: r.reason for r in rows if not r.ok}
    assert set(failed) == set(corpus) | {"missing.jpg"} and summary.done == len(samples)
    assert all(failed[n] for n in failed) and "No such file" in failed["missing.jpg"]
    ok = [r for r in rows if r.ok]
    expected = ex.describe([decode_image(p) for p in images])
    for i, r in enumerate(ok):
        assert r.image_size == decode_image(images[i]).shape[:2]
        for key, vec in r.descriptors.items():
            assert _max_rel(vec, expected[key][i]) <= 1e-5


def test_config_and_device_errors(tiny_weights):
    with pytest.raises(VggfeatError, match="Q=200 is too small"):
        _config(scales=(200,))
    with pytest.raises(VggfeatError, match="Unknown precision"):
        _config(precision="fp8")
    with pytest.raises(VggfeatError, match="max-side"):
        _config(max_side=300, scales=(384,))
    if not torch.cuda.is_available():
        with pytest.raises(VggfeatError, match="no CUDA GPU"):
            Extractor([tiny_weights("D")], _config(device="cuda"))
    with pytest.raises(VggfeatError, match="each net once"):
        Extractor([tiny_weights("D"), tiny_weights("D")], _config())


@pytest.mark.gpu
def test_cuda_fp32_matches_cpu(tiny_weights):
    w = tiny_weights("D", seed=8)
    cpu = Extractor([w], _config()).describe(_images())
    gpu = Extractor([w], _config(device="cuda")).describe(_images())
    for key in cpu:
        assert _max_rel(gpu[key], cpu[key]) <= 1e-4
