"""Oxford imports: Caffe/Keras files built here, converted, and checked against references
computed straight from each file's own layout (never through the converter)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vggfeat import oxford
from vggfeat.errors import WeightsError
from vggfeat.nets import CONFIGS, DenseVGG
from vggfeat.weights import PREPROCESS, load_weights, read_weights_metadata, sha256_file

WIDTH = 1 / 16  # convs 4..32 channels, fc6/fc7 256-d
NUM_CLASSES = 10
MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)

# ---------------------------------------------------------------------------------------------
# Releases with known random values, each in its own layout. Names and channels come from
# Table 1 (nets.CONFIGS) here, not from the converter.


def _conv_layers(net: str) -> list[tuple[int, int, int, int]]:
    """(block, index in block, in channels, out channels) of each conv of ``net``."""
    layers, block, index, channels = [], 1, 0, 3
    for item in CONFIGS[net]:
        if item == "M":
            block, index = block + 1, 0
        else:
            index += 1
            out = round(item * WIDTH)
            layers.append((block, index, channels, out))
            channels = out
    return layers


def caffe_release(net: str = "D", seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Caffe layout: conv (out, in, 3, 3); fc (out, in); fc6's inputs are pool5 C x H x W."""
    rng = np.random.default_rng(seed)
    release = {}
    for block, index, cin, cout in _conv_layers(net):
        w = rng.normal(0, np.sqrt(2 / (9 * cin)), (cout, cin, 3, 3))
        release[f"conv{block}_{index}"] = (w, rng.normal(0, 0.1, cout))
    pool5, hidden = round(512 * WIDTH), round(4096 * WIDTH)
    for name, fin, fout in (
        ("fc6", pool5 * 49, hidden),
        ("fc7", hidden, hidden),
        ("fc8", hidden, NUM_CLASSES),
    ):
        release[name] = (rng.normal(0, np.sqrt(2 / fin), (fout, fin)), rng.normal(0, 0.1, fout))
    return {k: (w.astype(np.float32), b.astype(np.float32)) for k, (w, b) in release.items()}


def keras_release(net: str = "D", seed: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keras layout: conv kernels (3, 3, in, out); dense (in, out); fc1's inputs pool5 H x W x C."""
    rng = np.random.default_rng(seed)
    release = {}
    for block, index, cin, cout in _conv_layers(net):
        k = rng.normal(0, np.sqrt(2 / (9 * cin)), (3, 3, cin, cout))
        release[f"block{block}_conv{index}"] = (k, rng.normal(0, 0.1, cout))
    pool5, hidden = round(512 * WIDTH), round(4096 * WIDTH)
    for name, fin, fout in (
        ("fc1", 7 * 7 * pool5, hidden),
        ("fc2", hidden, hidden),
        ("predictions", hidden, NUM_CLASSES),
    ):
        release[name] = (rng.normal(0, np.sqrt(2 / fin), (fin, fout)), rng.normal(0, 0.1, fout))
    return {k: (w.astype(np.float32), b.astype(np.float32)) for k, (w, b) in release.items()}


# ---------------------------------------------------------------------------------------------
# References: the paper's dense fc7 (after ReLU, global average), computed in each layout.


def caffe_input(rgb: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) BGR minus the mean pixel, by hand."""
    bgr = rgb[:, :, ::-1].astype(np.float32) - MEAN_BGR
    return torch.from_numpy(np.ascontiguousarray(bgr.transpose(2, 0, 1)))[None]


def _features(x: torch.Tensor, net: str, kernels: list[tuple[np.ndarray, np.ndarray]]):
    convs = iter(kernels)
    for item in CONFIGS[net]:
        if item == "M":
            x = F.max_pool2d(x, 2, 2)
        else:
            w, b = next(convs)
            x = F.relu(F.conv2d(x, torch.from_numpy(w), torch.from_numpy(b), padding=1))
    return x[0]  # (C, H, W)


def _dense_fc7(windows: list[np.ndarray], fc6, fc7, keras: bool) -> np.ndarray:
    out = []
    for v in windows:
        if keras:  # y = x @ kernel + bias
            h6 = np.maximum(v @ fc6[0] + fc6[1], 0)
            out.append(np.maximum(h6 @ fc7[0] + fc7[1], 0))
        else:  # y = W x + b
            h6 = np.maximum(fc6[0] @ v + fc6[1], 0)
            out.append(np.maximum(fc7[0] @ h6 + fc7[1], 0))
    return np.mean(out, axis=0)


def caffe_reference(release, rgb: np.ndarray, net: str = "D") -> np.ndarray:
    convs = [release[f"conv{b}_{i}"] for b, i, _, _ in _conv_layers(net)]
    pool5 = _features(caffe_input(rgb), net, convs).double().numpy()  # (C, H, W)
    _, h, w = pool5.shape
    # Caffe's InnerProduct flattens each 7x7 window C x H x W.
    windows = [
        pool5[:, i : i + 7, j : j + 7].reshape(-1) for i in range(h - 6) for j in range(w - 6)
    ]
    return _dense_fc7(windows, release["fc6"], release["fc7"], keras=False)


def keras_reference(release, rgb: np.ndarray, net: str = "D", fc6_order: str = "HWC"):
    # Keras conv kernels (kh, kw, in, out) are a cross-correlation like F.conv2d's (out, in, kh, kw).
    convs = [
        (np.ascontiguousarray(k.transpose(3, 2, 0, 1)), b)
        for k, b in (release[f"block{b}_conv{i}"] for b, i, _, _ in _conv_layers(net))
    ]
    pool5 = _features(caffe_input(rgb), net, convs).double().numpy()
    hwc = pool5.transpose(1, 2, 0)  # channels-last, as Keras holds it
    h, w, _ = hwc.shape
    if fc6_order == "HWC":
        windows = [
            hwc[i : i + 7, j : j + 7].reshape(-1) for i in range(h - 6) for j in range(w - 6)
        ]
    else:  # a deliberately wrong reading, to show the data tells the orders apart
        windows = [
            pool5[:, i : i + 7, j : j + 7].reshape(-1) for i in range(h - 6) for j in range(w - 6)
        ]
    return _dense_fc7(windows, release["fc1"], release["fc2"], keras=True)


def extract_fc7(path, rgb: np.ndarray, net: str = "D") -> np.ndarray:
    """Descriptor through the library: load_weights -> build -> DenseVGG on the preprocessed image."""
    weights = load_weights(str(path), net)
    x = weights.preprocess.normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    with torch.no_grad():
        return DenseVGG(weights.build())(x)[0].double().numpy()


def assert_descriptor_equal(got: np.ndarray, ref: np.ndarray) -> None:
    assert (ref > 0).mean() > 0.2, "degenerate test data: fc7 mostly zero"
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.fixture(scope="module")
def rgb_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "224x224": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        "256x320": rng.integers(0, 256, (256, 320, 3), dtype=np.uint8),
    }


# ---------------------------------------------------------------------------------------------
# A tiny protobuf encoder, enough for caffe.proto's NetParameter.


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _len(number: int, payload: bytes | str) -> bytes:
    payload = payload.encode() if isinstance(payload, str) else payload
    return _key(number, 2) + _varint(len(payload)) + payload


def _int(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _values(number: int, values: np.ndarray, dtype: str, packed: bool) -> bytes:
    values = np.asarray(values, dtype).ravel()
    if packed:
        return _len(number, values.tobytes())
    wire = 5 if dtype == "<f4" else 1
    records = np.empty(values.size, dtype=[("key", "u1"), ("value", dtype)])
    records["key"], records["value"] = number << 3 | wire, values
    return records.tobytes()


def encode_blob(array: np.ndarray, packed: bool, legacy: bool, double: bool = False) -> bytes:
    array = np.asarray(array, np.float32)
    data = _values(8, array, "<f8", packed) if double else _values(5, array, "<f4", packed)
    if legacy:  # (num, channels, height, width), written after the data
        dims = (1,) * (4 - array.ndim) + array.shape
        return data + b"".join(_int(n, d) for n, d in zip((1, 2, 3, 4), dims))
    shape = _len(7, _len(1, b"".join(_varint(d) for d in array.shape)))
    return shape + data


def _junk_group(number: int) -> bytes:
    # A proto2 group (wire types 3/4) holding a nested group: unknown, to be skipped.
    inner = _key(2, 3) + _int(1, 5) + _key(2, 4)
    return _key(number, 3) + _int(1, 300) + _len(2, "x") + inner + _key(number, 4)


def encode_layer(version: str, name: str, blobs: list[bytes], kind: str) -> bytes:
    if version == "V2":
        body = (
            _len(1, name)
            + _len(2, {"conv": "Convolution", "fc": "InnerProduct"}.get(kind, kind))
            + _len(3, "bottom")
            + _len(4, name)
            + _len(6, _key(2, 5) + np.float32(1).tobytes())  # ParamSpec lr_mult
            + b"".join(_len(7, b) for b in blobs)
            + _len(106, _int(1, 64) + _int(3, 1))  # convolution_param
        )
        return _len(100, body)
    enum = {"conv": 4, "fc": 14, "relu": 18, "pool": 17}[kind]
    if version == "V0":
        inner = _len(1, name) + _len(2, kind) + b"".join(_len(50, b) for b in blobs)
        return _len(2, _len(1, inner))
    body = (
        b"".join(_len(6, b) for b in blobs)  # blobs before the name: order must not matter
        + _len(2, "bottom")
        + _len(3, name)
        + _len(4, name)
        + _int(5, enum)
        + _values(7, np.ones(2), "<f4", packed=False)  # blobs_lr, unpacked fixed32
        + _junk_group(990)
        + _len(10, _int(1, 64))
    )
    return _len(2, body)


def encode_caffemodel(
    release, version: str = "V1", packed: bool = True, legacy: bool = True, double_fc8=False
) -> bytes:
    out = _len(1, "VGG_ILSVRC_16_layers") + _len(3, "data")
    out += b"".join(_int(4, d) for d in (10, 3, 224, 224))  # input_dim
    previous_block = 1
    for name, (w, b) in release.items():
        block = int(name[4]) if name.startswith("conv") else 6
        if block != previous_block:
            out += encode_layer(version, f"pool{previous_block}", [], "pool")
            previous_block = block
        double = double_fc8 and name == "fc8"
        blobs = [encode_blob(a, packed, legacy, double) for a in (w, b)]
        out += encode_layer(version, name, blobs, "conv" if name.startswith("conv") else "fc")
        out += encode_layer(version, f"relu_{name}", [], "relu")
    return out


def write_caffemodel(path, release, **kwargs):
    path.write_bytes(encode_caffemodel(release, **kwargs))
    return path


# ---------------------------------------------------------------------------------------------
# Keras HDF5 writers in the layouts Keras has used.


def _keras_layer_names(release) -> list[str]:
    names, block = ["input_1"], 1
    for name in release:
        if name.startswith("block") and int(name[5]) != block:
            names.append(f"block{block}_pool")
            block = int(name[5])
        if name == "fc1":
            names += [f"block{block}_pool", "flatten"]
        names.append(name)
    return names


def write_keras(path, release, layout: str = "keras2"):
    """layout: 'keras1' (flat *_W_1:0 names), 'keras2' (nested kernel:0), 'model' (full-model
    save under model_weights), 'keras3' (layers/<name>/vars/N, no name attributes)."""
    with h5py.File(path, "w") as f:
        if layout == "keras3":
            for name in _keras_layer_names(release):
                group = f.create_group(f"layers/{name}/vars")
                if name in release:
                    group["0"], group["1"] = release[name]
            f["optimizer/vars/0"] = np.zeros(3)
            return path
        root = f
        if layout == "model":
            f.attrs["model_config"] = '{"class_name": "Functional"}'
            f["optimizer_weights/Adam/block1_conv1/kernel/m:0"] = np.zeros((3, 3, 3, 4))
            root = f.create_group("model_weights")
        names = _keras_layer_names(release)
        root.attrs["layer_names"] = np.array([n.encode() for n in names])
        root.attrs["keras_version"] = b"2.1.6" if layout != "keras1" else b"1.2.2"
        root.attrs["backend"] = b"tensorflow"
        for name in names:
            group = root.create_group(name)
            arrays = release.get(name, ())
            if layout == "keras1":
                wnames = [f"{name}_W_1:0", f"{name}_b_1:0"][: len(arrays)]
            else:
                wnames = [f"{name}/kernel:0", f"{name}/bias:0"][: len(arrays)]
            group.attrs["weight_names"] = np.array([w.encode() for w in wnames], dtype="S")
            for wname, array in zip(wnames, arrays):
                group[wname] = array
    return path


# ---------------------------------------------------------------------------------------------
# Conversion reproduces the original nets.

CAFFE_VARIANTS = [
    pytest.param("V1", False, True, id="V1-unpacked-legacy"),
    pytest.param("V1", True, True, id="V1-packed-legacy"),
    pytest.param("V2", True, False, id="V2-packed-shape"),
    pytest.param("V2", False, True, id="V2-unpacked-legacy"),
    pytest.param("V0", True, True, id="V0-packed-legacy"),
]


@pytest.mark.parametrize("version,packed,legacy", CAFFE_VARIANTS)
def test_caffe_import_reproduces_caffe_net(tmp_path, rgb_images, version, packed, legacy):
    release = caffe_release("D")
    src = write_caffemodel(
        tmp_path / "VGG_ILSVRC_16_layers.caffemodel",
        release,
        version=version,
        packed=packed,
        legacy=legacy,
        double_fc8=version == "V2" and packed,
    )
    out = oxford.import_weights(src, "D", tmp_path / "oxford_vgg16.safetensors").path
    for rgb in rgb_images.values():
        assert_descriptor_equal(extract_fc7(out, rgb), caffe_reference(release, rgb))
    meta = read_weights_metadata(out)
    assert meta["preprocess"] == PREPROCESS["caffe"]
    assert meta["origin"]["format"] == f"caffe {version}"


def test_caffe_import_copies_blobs_unchanged(tmp_path):
    # Caffe's layout is torch's: no channel swap of conv1 (BGR is the preprocessing's job) and
    # no permutation of fc6 (C x H x W, like torch.flatten).
    release = caffe_release("D")
    src = write_caffemodel(tmp_path / "a.caffemodel", release)
    state, origin = oxford.convert(src, "D")
    np.testing.assert_array_equal(state["features.0.weight"].numpy(), release["conv1_1"][0])
    np.testing.assert_array_equal(state["features.24.bias"].numpy(), release["conv5_1"][1])
    np.testing.assert_array_equal(state["classifier.0.weight"].numpy(), release["fc6"][0])
    np.testing.assert_array_equal(state["classifier.6.weight"].numpy(), release["fc8"][0])
    assert origin["file"] == "a.caffemodel" and origin["sha256"] == sha256_file(src)
    assert origin["format"] == "caffe V1"
    assert origin["converter_version"] == oxford.CONVERTER_VERSION


def test_unpacked_run_across_scan_chunks(tmp_path, monkeypatch):
    # The reader scans unpacked floats in chunks; make chunks tiny so runs cross many of them.
    monkeypatch.setattr(oxford, "_RUN_CHUNK", 7)
    release = caffe_release("D", seed=3)
    src = write_caffemodel(tmp_path / "a.caffemodel", release, packed=False, legacy=True)
    state, _ = oxford.convert(src, "D")
    np.testing.assert_array_equal(state["classifier.3.weight"].numpy(), release["fc7"][0])
    np.testing.assert_array_equal(state["features.2.bias"].numpy(), release["conv1_2"][1])


def test_caffe_vgg19(tmp_path, rgb_images):
    release = caffe_release("E", seed=5)
    src = write_caffemodel(tmp_path / "VGG_ILSVRC_19_layers.caffemodel", release, version="V2")
    out = oxford.import_weights(src, "vgg19", tmp_path / "oxford_vgg19.safetensors").path
    rgb = rgb_images["256x320"]
    assert_descriptor_equal(extract_fc7(out, rgb, "E"), caffe_reference(release, rgb, "E"))


@pytest.mark.parametrize("layout", ["keras1", "keras2", "model", "keras3"])
def test_keras_import_reproduces_keras_net(tmp_path, rgb_images, layout):
    release = keras_release("D")
    src = write_keras(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels.h5", release, layout)
    out = oxford.import_weights(src, "D", tmp_path / "oxford_vgg16.safetensors").path
    for rgb in rgb_images.values():
        assert_descriptor_equal(extract_fc7(out, rgb), keras_reference(release, rgb))
    origin = read_weights_metadata(out)["origin"]
    assert origin["format"] == "keras" and origin["sha256"] == sha256_file(src)
    if layout != "keras3":
        assert origin["backend"] == "tensorflow"


def test_keras_fc6_is_permuted_from_hwc_to_chw(tmp_path):
    release = keras_release("D")
    state, _ = oxford.convert(write_keras(tmp_path / "k.h5", release), "D")
    kernel = release["fc1"][0]  # (7 * 7 * C, out), rows (h * 7 + w) * C + c
    weight = state["classifier.0.weight"].numpy()  # (out, C * 49), columns c * 49 + h * 7 + w
    channels = kernel.shape[0] // 49
    rng = np.random.default_rng(0)
    for _ in range(50):
        o, c, h, w = (int(rng.integers(n)) for n in (kernel.shape[1], channels, 7, 7))
        assert weight[o, c * 49 + h * 7 + w] == kernel[(h * 7 + w) * channels + c, o]
    conv = release["block2_conv1"][0]  # (kh, kw, in, out)
    np.testing.assert_array_equal(state["features.5.weight"].numpy()[3, 1, 0, 2], conv[0, 2, 1, 3])


def test_fc6_order_matters_for_the_test_data(tmp_path, rgb_images):
    # Guard for the tests above: with this data, a converter that skipped the H x W x C -> C x H x W
    # permutation (or a reference that misread it) would be caught, at both image sizes.
    release = keras_release("D")
    out = oxford.import_weights(
        write_keras(tmp_path / "k.h5", release), "D", tmp_path / "o.safetensors"
    )
    weights = load_weights(str(out.path), "D")
    naive_fc6 = np.ascontiguousarray(release["fc1"][0].T)  # transposed, rows left H x W x C
    weights.state_dict["classifier.0.weight"] = torch.from_numpy(naive_fc6)
    for rgb in rgb_images.values():
        ref = keras_reference(release, rgb)
        x = weights.preprocess.normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None])
        with torch.no_grad():
            naive = DenseVGG(weights.build())(x)[0].double().numpy()
        assert np.abs(naive - ref).max() > 0.05 * np.abs(ref).max()
        wrong_ref = keras_reference(release, rgb, fc6_order="CHW")
        assert np.abs(wrong_ref - ref).max() > 0.05 * np.abs(ref).max()


def test_bgr_and_mean_matter_for_the_test_data(tmp_path, rgb_images):
    release = caffe_release("D")
    out = oxford.import_weights(
        write_caffemodel(tmp_path / "a.caffemodel", release), "D", tmp_path / "o.safetensors"
    ).path
    rgb = rgb_images["224x224"]
    ref = caffe_reference(release, rgb)
    weights = load_weights(str(out), "D", preprocess="torchvision")  # the wrong spec
    x = weights.preprocess.normalize(torch.from_numpy(rgb).permute(2, 0, 1)[None])
    with torch.no_grad():
        wrong = DenseVGG(weights.build())(x)[0].double().numpy()
    assert np.abs(wrong - ref).max() > 0.05 * np.abs(ref).max()
    swapped = caffe_reference(release, np.ascontiguousarray(rgb[:, :, ::-1]))
    assert np.abs(swapped - ref).max() > 0.05 * np.abs(ref).max()


def test_extractor_on_imported_weights(tmp_path, rgb_images):
    extract = pytest.importorskip("vggfeat.extract")
    release = keras_release("D")
    out = oxford.import_weights(
        write_keras(tmp_path / "k.h5", release), "D", tmp_path / "o.safetensors"
    )
    config = extract.ExtractConfig(scales=(256,), flip=True, device="cpu", workers=0)
    engine = extract.Extractor([load_weights(str(out.path), "D")], config)
    rgb = rgb_images["256x320"]
    got = engine.forward("D", [rgb])[0]
    ref = (keras_reference(release, rgb) + keras_reference(release, rgb[:, ::-1])) / 2
    assert_descriptor_equal(got.astype(np.float64), ref)


def test_layer_specs_match_torchvision_keys():
    import torchvision.models as tvm

    for net, build in (("D", tvm.vgg16), ("E", tvm.vgg19)):
        with torch.device("meta"):
            keys = set(build().state_dict())
        specs = oxford.layer_specs(net)
        assert {f"{s.key}.{p}" for s in specs for p in ("weight", "bias")} == keys
        assert [s.caffe for s in specs][-3:] == ["fc6", "fc7", "fc8"]
        assert specs[-4].caffe == ("conv5_3" if net == "D" else "conv5_4")


# ---------------------------------------------------------------------------------------------
# Clear errors.


def test_wrong_net_is_named(tmp_path):
    src = write_caffemodel(tmp_path / "VGG_ILSVRC_19_layers.caffemodel", caffe_release("E"))
    with pytest.raises(WeightsError, match=r"looks like net E \(vgg19.*pass --net E"):
        oxford.convert(src, "D")
    keras = write_keras(tmp_path / "vgg16.h5", keras_release("D"))
    with pytest.raises(WeightsError, match=r"looks like net D \(vgg16.*pass --net D"):
        oxford.convert(keras, "E")


def test_truncated_files(tmp_path):
    data = encode_caffemodel(caffe_release("D"))
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(WeightsError, match="cut.caffemodel ends early.*truncated"):
        oxford.convert(cut, "D")
    # Cut exactly between layers: the protobuf is valid, but fc7 and fc8 are gone.
    release = caffe_release("D")
    del release["fc7"], release["fc8"]
    boundary = write_caffemodel(tmp_path / "boundary.caffemodel", release)
    with pytest.raises(WeightsError, match="lacks layers fc7, fc8.*truncated"):
        oxford.convert(boundary, "D")
    full = write_keras(tmp_path / "full.h5", keras_release("D"))
    short = tmp_path / "short.h5"
    short.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(WeightsError, match="short.h5.*truncated or damaged"):
        oxford.convert(short, "D")


def test_keras_layer_listed_without_its_group_is_named(tmp_path):
    path = write_keras(tmp_path / "gap.h5", keras_release("D"))
    with h5py.File(path, "a") as f:
        del f["block3_conv2"]
    with pytest.raises(WeightsError, match="gap.h5: layer '/block3_conv2' is listed .* missing"):
        oxford.convert(path, "D")


def test_wrong_shapes(tmp_path):
    release = caffe_release("D")
    w, b = release["fc6"]
    release["fc6"] = (w[:, :-49], b)  # as if pool5 had one channel fewer
    src = write_caffemodel(tmp_path / "a.caffemodel", release, version="V2", legacy=False)
    with pytest.raises(
        WeightsError, match=r"layer fc6 weight has shape \(256, 1519\).*\(256, 1568\)"
    ):
        oxford.convert(src, "D")
    release = keras_release("D")
    k, b = release["block3_conv2"]
    release["block3_conv2"] = (k[:, :, :-1], b)
    with pytest.raises(WeightsError, match="layer block3_conv2 weight has shape"):
        oxford.convert(write_keras(tmp_path / "k.h5", release), "D")
    release = caffe_release("D")
    release["conv2_1"] = (release["conv2_1"][0], release["conv2_1"][1][:-1])
    with pytest.raises(WeightsError, match="layer conv2_1 bias"):
        oxford.convert(write_caffemodel(tmp_path / "b.caffemodel", release), "D")


def test_notop_is_refused(tmp_path):
    release = {k: v for k, v in keras_release("D").items() if k.startswith("block")}
    src = write_keras(tmp_path / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5", release)
    with pytest.raises(
        WeightsError, match="no fc layers.*notop.*use vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    ):
        oxford.convert(src, "D")


def test_theano_kernels_are_refused(tmp_path):
    release = keras_release("D")
    release = {
        k: (w.transpose(3, 2, 0, 1) if w.ndim == 4 else w, b) for k, (w, b) in release.items()
    }
    with pytest.raises(WeightsError, match="Theano-ordered.*flipped"):
        oxford.convert(write_keras(tmp_path / "vgg16_th.h5", release), "D")


def test_not_vgg_and_garbage(tmp_path):
    rng = np.random.default_rng(0)
    alexnet = {f"conv{i}": (rng.normal(size=(4, 3, 3, 3)), np.zeros(4)) for i in range(1, 6)}
    src = write_caffemodel(tmp_path / "alexnet.caffemodel", alexnet)
    with pytest.raises(WeightsError, match="not a VGG caffe model.*conv1, conv2"):
        oxford.convert(src, "D")
    garbage = tmp_path / "garbage.caffemodel"
    garbage.write_bytes(rng.integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(
        WeightsError,
        match="garbage.caffemodel (ends early|is not a Caffe model|holds no Caffe layers)",
    ):
        oxford.convert(garbage, "D")
    text = tmp_path / "VGG_ILSVRC_16_layers_deploy.caffemodel"
    text.write_bytes(b'name: "VGG_ILSVRC_16_layers"\ninput: "data"\n' * 5)
    with pytest.raises(WeightsError, match="deploy.caffemodel"):
        oxford.convert(text, "D")
    fake_h5 = tmp_path / "fake.h5"
    fake_h5.write_bytes(b"not hdf5 at all" * 10)
    with pytest.raises(WeightsError, match="fake.h5 is not an HDF5 file"):
        oxford.convert(fake_h5, "D")
    empty = tmp_path / "empty.caffemodel"
    empty.write_bytes(b"")
    with pytest.raises(WeightsError, match="empty"):
        oxford.convert(empty, "D")


def test_format_detection(tmp_path):
    caffe = write_caffemodel(tmp_path / "a.caffemodel", caffe_release("D"))
    renamed = tmp_path / "weights.bin"
    renamed.write_bytes(caffe.read_bytes())
    with pytest.raises(
        WeightsError, match=r"Cannot tell the format of weights.bin.*--format caffe"
    ):
        oxford.convert(renamed, "D")
    state, origin = oxford.convert(renamed, "D", format="caffe")
    assert origin["format"] == "caffe V1" and len(state) == 32
    keras = write_keras(tmp_path / "keras_weights.bin", keras_release("D"))
    assert oxford.detect_format(keras) == "keras"  # HDF5 by content, whatever the name
    with pytest.raises(WeightsError, match="HDF5.*--format keras"):
        oxford.convert(keras, "D", format="caffe")
    for name, match in (
        ("deploy.prototxt", "network definition"),
        ("model.pth", "already a torch/vggfeat weight file"),
        ("model.keras", "zip archive"),
    ):
        (tmp_path / name).write_bytes(b"PK\x03\x04" if name.endswith(".keras") else b"layer {}")
        with pytest.raises(WeightsError, match=match):
            oxford.convert(tmp_path / name, "D")
    with pytest.raises(WeightsError, match="Unknown format 'onnx'"):
        oxford.convert(caffe, "D", format="onnx")


def test_output_must_be_safetensors(tmp_path):
    src = write_caffemodel(tmp_path / "a.caffemodel", caffe_release("D"))
    with pytest.raises(WeightsError, match=r"must end in .safetensors.*oxford_vgg16.safetensors"):
        oxford.import_weights(src, "D", tmp_path / "out.pth")


def test_inspect_source(tmp_path):
    src = write_caffemodel(tmp_path / "a.caffemodel", caffe_release("E"), version="V2")
    found = oxford.inspect_source(src)
    assert found["net"] == "E" and found["format"] == "caffe V2" and found["has_fc"]
    assert found["layers"][:2] == ["conv1_1", "conv1_2"] and len(found["layers"]) == 19
