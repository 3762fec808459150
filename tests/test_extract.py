"""The dense engine: exact mixed-size batching, flips, both nets from one decode, precision."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_bad_images, write_images
from PIL import Image

from vggfeat import devices, extract
from vggfeat.errors import ImageError, VggfeatError
from vggfeat.extract import ExtractConfig, Extractor, _max_pool, plan_batches
from vggfeat.images import decode_image, rescale_all

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


def _shapes(n=60, seed=0):
    """Shapes as images at Q=256 have them: one side 256, the other 256..520, both ways."""
    rng = np.random.default_rng(seed)
    longs = rng.integers(256, 520, n)
    return [(256, int(L)) if rng.random() < 0.7 else (int(L), 256) for L in longs]


@pytest.mark.parametrize("step,max_waste", [(1, 0.0), (32, 0.0), (32, 0.15), (64, 1.0)])
@pytest.mark.parametrize("batch_size", [1, 4, 16])
def test_plan_batches_covers_every_image_once_within_limits(step, max_waste, batch_size):
    shapes = _shapes()
    batches = plan_batches(shapes, batch_size, step, max_waste)
    placed = sorted(i for members, _ in batches for i in members)
    assert placed == list(range(len(shapes)))
    for members, (height, width) in batches:
        assert 1 <= len(members) <= batch_size
        assert height % step == 0 and width % step == 0
        assert all(shapes[i][0] <= height and shapes[i][1] <= width for i in members)
        padded = 1 - sum(shapes[i][0] * shapes[i][1] for i in members) / (
            len(members) * height * width
        )
        bucketed = len({(-(-shapes[i][0] // step), -(-shapes[i][1] // step)) for i in members})
        if bucketed > 1:  # a merged batch of leftovers keeps its padding within the bound
            assert padded <= max_waste + 1e-9


def test_plan_batches_exact_shapes_have_no_padding_and_buckets_fewer_shapes():
    shapes = _shapes()
    exact = plan_batches(shapes, 8)
    assert all(all(shapes[i] == canvas for i in members) for members, canvas in exact)
    bucketed = plan_batches(shapes, 8, step=32, max_waste=0.15)
    assert len({c for _, c in bucketed}) < len({c for _, c in exact})
    assert len(bucketed) < len(exact)  # fuller batches


def test_padded_buckets_equal_one_at_a_time(tiny_weights):
    """Bucketing near-equal shapes onto padded canvases (the GPU policy) stays exact."""
    w = tiny_weights("D", seed=1)
    images = _images()
    scaled = [rescale_all(im, (224, 256))[0] for im in images]
    padded = _config(batch_size=8, bucket=64, max_waste=1.0)
    plans = [plan_batches([p[s].shape[:2] for p in scaled], 8, 64, 1.0) for s in range(2)]
    assert any(
        any(scaled[i][s].shape[:2] != canvas for i in members)
        for s, plan in enumerate(plans)
        for members, canvas in plan
    )  # the test really pads
    batched = Extractor([w], padded).describe_scaled(scaled)
    single = Extractor([w], _config(batch_size=1)).describe_scaled(scaled)
    for key in single:
        assert _max_rel(batched[key], single[key]) <= 1e-5


def test_prepacked_cpu_path_equals_plain_path(tiny_weights):
    """Unpadded fp32 CPU batches run a conv stack with weights laid out once for oneDNN."""
    w = tiny_weights("E", seed=4)
    packed = Extractor([w], _config(batch_size=4))
    assert packed._packed["E"] is not None
    plain = Extractor([w], _config(batch_size=4))
    plain._packed = {}
    a, b = packed.describe(_images()), plain.describe(_images())
    for key in a:
        assert _max_rel(a[key], b[key]) <= 1e-5
    assert Extractor([w], _config(precision="bf16"))._packed == {}  # fp32 only


nnpack = pytest.mark.skipif(not torch._nnpack_available(), reason="torch built without NNPACK")


@nnpack
def test_winograd_convolutions_match_a_float64_reference(tiny_weights, monkeypatch):
    """Large maps' 3x3 convolutions run as NNPACK's Winograd, one image per call; the pool5
    maps agree with torchvision's conv stack in float64 to fp32 rounding."""
    real, shapes = torch._nnpack_spatial_convolution, []

    def counted(x, *args):
        shapes.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(torch, "_nnpack_spatial_convolution", counted)
    # Tiny nets' layers qualify from 16 channels and 768 positions.
    monkeypatch.setattr(
        extract, "_winograd_pays", lambda c, positions: c >= 16 and positions >= 768
    )
    ex = Extractor([tiny_weights("D", seed=2)], _config())
    packed, vgg = ex._packed["D"], ex.models["D"][0].vgg
    x = torch.randn((2, 3, 192, 256), generator=torch.Generator().manual_seed(0))
    shapes.clear()  # the probe at build time ran it too
    with torch.inference_mode():
        got = packed(x).double()
        want = copy.deepcopy(vgg.features).double()(x.double())
    # Width 1/16: inputs of < 16 channels (conv1_x, conv2_x, conv3_1) and conv5's 12x16 maps
    # stay direct; conv3_2, conv3_3 (16 channels, 48x64) and conv4_x (24x32) go Winograd.
    assert sorted({s[1:] for s in shapes}) == [(16, 24, 32), (16, 48, 64), (32, 24, 32)]
    assert len(shapes) == 2 * 5 and all(s[0] == 1 for s in shapes)
    assert float((got - want).norm() / want.norm()) < 1e-5


@nnpack
def test_winograd_switch_streams_and_store_record(tiny_weights, monkeypatch):
    # Tiny nets' layers qualify from 16 channels and 768 positions.
    monkeypatch.setattr(
        extract, "_winograd_pays", lambda c, positions: c >= 16 and positions >= 768
    )
    w = tiny_weights("E", seed=5)
    on = Extractor([w], _config(scales=(256,), streams=2))
    off = Extractor([w], _config(scales=(256,), streams=2, winograd=False))
    one_stream = Extractor([w], _config(scales=(256,), streams=1))
    a, b, c = on.describe(_images()), off.describe(_images()), one_stream.describe(_images())
    for key in a:
        assert 0 < _max_rel(a[key], b[key]) <= 1e-4  # another rounding of the same numbers
        assert _max_rel(a[key], c[key]) <= 1e-6  # concurrent streams share no NNPACK state
    assert "Winograd" in on.settings()["convolution"]
    assert "convolution" not in off.settings()  # as stores made before Winograd
    assert "convolution" not in Extractor([w], _config(precision="bf16")).settings()


@pytest.mark.parametrize("hw", [(8, 10), (7, 9), (3, 2)])
def test_max_pool_by_strided_maxima_equals_max_pool2d(hw):
    x = torch.randn((2, 3, *hw), generator=torch.Generator().manual_seed(0))
    x[0, 1, 0, 0] = float("nan")  # propagated, as max_pool2d does
    got, want = _max_pool(x, 2, 2), F.max_pool2d(x, 2, 2)
    assert got.shape == want.shape
    assert torch.allclose(got, want, rtol=0, atol=0, equal_nan=True)


def _out_of_memory_above(monkeypatch, limit):
    """Fault injection: any batch of more than ``limit`` images runs out of memory."""
    real = Extractor._describe_batch
    seen = []

    def fake(self, images, canvas):
        seen.append(len(images))
        if len(images) > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(self, images, canvas)

    monkeypatch.setattr(Extractor, "_describe_batch", fake)
    return seen


def test_out_of_memory_batch_is_retried_smaller_and_reported(tiny_weights, monkeypatch, tmp_path):
    w = tiny_weights("D", seed=2)
    paths = write_images(tmp_path, [(240, 320)] * 8)
    samples = [(p.name, str(p)) for p in paths]
    config = _config(batch_size=8, workers=0, streams=1)  # one stream: one batch of 8
    expected = []
    Extractor([w], config).run(samples, expected.append, progress=False)
    seen = _out_of_memory_above(monkeypatch, 2)
    rows = []
    summary = Extractor([w], config).run(samples, rows.append, progress=False)
    assert max(seen) == 8 and 2 in seen  # tried whole, then halves, then quarters
    assert all(r.ok for r in rows) and not summary.failed
    for got, want in zip(rows, expected):
        for key in want.descriptors:
            assert _max_rel(got.descriptors[key], want.descriptors[key]) <= 1e-5
    assert summary.notices and "retried as 4 + 4" in summary.notices[0]
    assert "out of CPU memory at Q=224" in summary.notices[0]


def test_image_that_does_not_fit_alone_fails_and_the_run_goes_on(
    tiny_weights, monkeypatch, tmp_path
):
    w = tiny_weights("D", seed=2)
    paths = write_images(tmp_path, [(240, 320), (224, 224), (240, 320)])
    real = Extractor._describe_batch

    def fake(self, images, canvas):  # the 224x224 image never fits
        if any(im.shape[:2] == (224, 224) for im in images):
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real(self, images, canvas)

    monkeypatch.setattr(Extractor, "_describe_batch", fake)
    rows = []
    ex = Extractor([w], _config(batch_size=4, bucket=64, max_waste=1.0))
    summary = ex.run([(p.name, str(p)) for p in paths], rows.append, progress=False)
    assert [r.ok for r in rows] == [True, False, True]
    assert "out of CPU memory" in rows[1].reason and summary.failed[0][0] == paths[1].name
    with pytest.raises(ImageError, match="out of CPU memory"):
        ex.describe([decode_image(paths[1])])


def test_precision_auto_is_bf16_only_where_native(tiny_weights, monkeypatch):
    w = tiny_weights("D")
    native = devices.native_bf16(torch.device("cpu"))
    assert Extractor([w], _config(precision="auto")).settings()["precision"] == (
        "bf16" if native else "fp32"
    )
    monkeypatch.setattr(devices, "native_bf16", lambda device: True)
    ex = Extractor([w], _config(precision="auto"))
    assert ex.precision == "bf16" and ex.settings()["precision"] == "bf16"  # what ran
    monkeypatch.setattr(devices, "native_bf16", lambda device: False)
    assert Extractor([w], _config(precision="auto")).settings()["precision"] == "fp32"
    assert Extractor([w], _config(precision="fp16")).settings()["precision"] == "fp16"


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
    # A window of 3 images: input order holds across windows too.
    ex = Extractor([tiny_weights("D")], _config(batch_size=2, workers=1, window=3))
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
    with pytest.raises(VggfeatError, match="Unknown decoder"):
        _config(decode="gpu")
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


@pytest.mark.gpu
def test_cuda_bucketed_batches_match_cpu(tiny_weights):
    """The GPU policy (32-px buckets, padded canvases zeroed by mask multiply) is exact."""
    w = tiny_weights("D", seed=9)
    cpu = Extractor([w], _config(batch_size=1)).describe(_images())
    gpu = Extractor([w], _config(device="cuda", batch_size=8)).describe(_images())
    for key in cpu:
        assert _max_rel(gpu[key], cpu[key]) <= 1e-4


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_cuda_reduced_precision_is_close(tiny_weights, precision):
    w = tiny_weights("D", seed=10)
    ref = Extractor([w], _config()).describe(_images())
    low = Extractor([w], _config(device="cuda", precision=precision)).describe(_images())
    for key in ref:
        assert _max_rel(low[key], ref[key]) <= 5e-2


@pytest.mark.gpu
def test_cuda_compile_matches_eager(tiny_weights):
    w = tiny_weights("D", seed=11)
    images = [np.random.default_rng(i).integers(0, 256, (240, 320, 3), np.uint8) for i in range(4)]
    eager = Extractor([w], _config(device="cuda")).describe(images)
    compiled = Extractor([w], _config(device="cuda", compile=True)).describe(images)
    for key in eager:
        assert _max_rel(compiled[key], eager[key]) <= 1e-4


@pytest.mark.gpu
def test_cuda_out_of_memory_is_retried_for_real(tiny_weights):
    """With the GPU capped at 1 GiB, a 64-image batch of 224x2048 images (~2 GiB of
    activations) runs out of memory and is split; every image still gets its descriptor."""
    w = tiny_weights("D", seed=12)
    rng = np.random.default_rng(0)
    images = [[rng.integers(0, 256, (224, 2048, 3), np.uint8)] for _ in range(64)]
    ex = Extractor([w], _config(device="cuda", scales=(224,), batch_size=64))
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(2**30 / total)
    try:
        out, failed = ex._describe(images)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert not failed and np.isfinite(out[("D", 224)]).all()
    assert ex._notices and "retried as 32 + 32" in ex._notices[0]
