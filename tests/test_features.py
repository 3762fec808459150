"""Design matrix: stack/average/fusion/block-norm numerics, id alignment, and every refusal."""

from __future__ import annotations

import numpy as np
import pytest
from _svm_data import make_store, store_settings, weights_provenance

from vggfeat.errors import SettingsMismatch, VggfeatError
from vggfeat.features import (
    FeatureError,
    FeatureSpec,
    check_provenance,
    design_matrix,
    feature_provenance,
    feature_record,
    model_matrix,
    open_stores,
    predict_store,
    resolve_spec,
    store_ids,
    usable_ids,
)
from vggfeat.store import FeatureStore

IDS = [f"{i:06d}" for i in range(1, 9)]


def l2(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def two_stores(tmp_path):
    """voc_D.h5 (ids in order) and voc_E.h5 (same ids reversed, plus two extra images)."""
    d = make_store(tmp_path / "voc_D.h5", IDS, store_settings(["D"], [256, 384, 512]), seed=1)
    e_ids = ["extra1", *IDS[::-1], "extra2"]
    e = make_store(tmp_path / "voc_E.h5", e_ids, store_settings(["E"], [256, 384, 512]), seed=2)
    # Reference arrays with rows in IDS order.
    e_rows = [e_ids.index(i) for i in IDS]
    e = {k: v[e_rows] for k, v in e.items()}
    return tmp_path / "voc_D.h5", tmp_path / "voc_E.h5", d, e


# ----------------------------------------------------------------------------- numerics


def test_stack_is_l2_of_concatenated_scales(two_stores):
    path_d, _, d, _ = two_stores
    spec = FeatureSpec(("D",), (384, 256), "stack")
    x = design_matrix([path_d], IDS, spec)
    want = l2(np.hstack([d["D", 384], d["D", 256]]))  # order as given, not sorted
    assert x.dtype == np.float32 and x.shape == (8, 2 * 16) == (8, spec.dim(16))
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-7)


def test_average_is_l2_of_mean_over_scales(two_stores):
    path_d, _, d, _ = two_stores
    x = design_matrix([path_d], IDS, FeatureSpec(("D",), (256, 384, 512), "average"))
    want = l2((d["D", 256].astype(np.float64) + d["D", 384] + d["D", 512]) / 3)
    assert x.shape == (8, 16)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-7)


def test_fusion_stacks_nets_in_given_order_aligned_by_id(two_stores):
    path_d, path_e, d, e = two_stores
    spec = FeatureSpec(("E", "D"), (256, 512), "stack")
    x = design_matrix([path_d, path_e], IDS, spec)
    want = l2(np.hstack([e["E", 256], e["E", 512], d["D", 256], d["D", 512]]))
    assert x.shape == (8, 64)
    np.testing.assert_allclose(x, want, rtol=1e-6, atol=1e-7)
    # Rows follow the requested ids, whatever the stores' orders.
    sub = ["000007", "000002"]
    np.testing.assert_allclose(design_matrix([path_e, path_d], sub, spec), x[[6, 1]], rtol=1e-6)


def test_block_norm_stack_and_average(two_stores):
    path_d, path_e, d, e = two_stores
    qs = (256, 384)
    stack = design_matrix([path_d, path_e], IDS, FeatureSpec(("D", "E"), qs, "stack", True))
    want = l2(np.hstack([l2(np.hstack([l2(n[net, q]) for q in qs])) for net, n in
                         (("D", d), ("E", e))]))  # fmt: skip
    np.testing.assert_allclose(stack, want, rtol=1e-6, atol=1e-7)

    avg = design_matrix([path_d, path_e], IDS, FeatureSpec(("D", "E"), qs, "average", True))
    per_net = [l2((l2(n[net, 256]) + l2(n[net, 384])) / 2) for net, n in (("D", d), ("E", e))]
    want = l2(np.hstack(per_net))
    np.testing.assert_allclose(avg, want, rtol=1e-6, atol=1e-7)
    # Without block norm the answer differs (raw magnitudes weigh in), so the option matters.
    plain = design_matrix([path_d, path_e], IDS, FeatureSpec(("D", "E"), qs, "average"))
    assert not np.allclose(plain, avg, atol=1e-4)


def test_one_store_with_both_nets_equals_two_stores(tmp_path, two_stores):
    path_d, path_e, d, e = two_stores
    both = store_settings(["D", "E"], [256, 384, 512])
    data = {**d, **e}
    make_store(tmp_path / "both.h5", IDS, both, data=data)
    spec = FeatureSpec(("D", "E"), (256, 384, 512), "average")
    np.testing.assert_array_equal(
        design_matrix([tmp_path / "both.h5"], IDS, spec), design_matrix([path_d, path_e], IDS, spec)
    )


def test_zero_descriptor_stays_zero_not_nan(tmp_path):
    settings = store_settings(["D"], [256])
    data = {("D", 256): np.zeros((2, 16), np.float32)}
    data["D", 256][1] = 3.0
    make_store(tmp_path / "z.h5", ["a", "b"], settings, data=data)
    x = design_matrix([tmp_path / "z.h5"], ["a", "b"], FeatureSpec(("D",), (256,), "stack", True))
    assert np.all(x[0] == 0) and np.isclose(np.linalg.norm(x[1]), 1.0)


def test_ids_may_omit_the_file_extension(tmp_path):
    settings = store_settings(["D"], [256])
    data = make_store(tmp_path / "s.h5", ["000005.jpg", "000007.jpg"], settings)
    x = design_matrix([tmp_path / "s.h5"], ["000007", "000005"], FeatureSpec(("D",), (256,)))
    np.testing.assert_allclose(x, l2(data["D", 256][::-1]), rtol=1e-6)


def test_an_id_matching_two_images_is_ambiguous_not_missing(tmp_path):
    """Regression: 'im00' with both im00.jpg and im00.png in the store read as 'missing'."""
    settings = store_settings(["D"], [256])
    make_store(tmp_path / "s.h5", ["im00.jpg", "im00.png", "im01.jpg"], settings)
    spec = FeatureSpec(("D",), (256,))
    with pytest.raises(FeatureError, match=r"1 of 2 test ids match several images in s\.h5 "
                       r"\(e\.g\. im00: im00\.jpg, im00\.png\); give those ids with their "
                       r"file extension"):  # fmt: skip
        design_matrix([tmp_path / "s.h5"], ["im01", "im00"], spec, role="test")
    assert design_matrix([tmp_path / "s.h5"], ["im00.png", "im01"], spec).shape == (2, 16)
    assert store_ids([tmp_path / "s.h5"], ["im01", "im00.png"], spec) == ["im01.jpg", "im00.png"]
    with pytest.raises(FeatureError, match="1 of 1 ids are missing"):
        design_matrix([tmp_path / "s.h5"], ["im02"], spec)


def test_usable_ids_are_the_same_in_any_store_order(tmp_path):
    make_store(tmp_path / "d.h5", IDS, store_settings(["D"], [256]), failed={IDS[2]: "bad"})
    make_store(tmp_path / "e.h5", ["extra", *IDS[:7][::-1]], store_settings(["E"], [256]),
               failed={IDS[4]: "truncated"})  # fmt: skip
    d_first, notes = usable_ids([tmp_path / "d.h5", tmp_path / "e.h5"])
    e_first, _ = usable_ids([tmp_path / "e.h5", tmp_path / "d.h5"])
    assert d_first == [i for i in IDS if i not in (IDS[2], IDS[4], IDS[7])]
    assert sorted(e_first) == sorted(d_first)
    assert notes == ["1 images failed extraction in d.h5", "1 images are missing from e.h5",
                     "1 images failed extraction in e.h5"]  # fmt: skip
    assert usable_ids([tmp_path / "e.h5"])[0] == [
        "extra", *[i for i in IDS[:7][::-1] if i != IDS[4]]]  # fmt: skip


def test_predict_store_builds_x_with_the_models_own_spec(two_stores, tmp_path):
    """Issue 11.6: decision_function takes any matrix of the right width, unchecked;
    predict_store builds it from the stores with the model's spec and provenance."""
    from vggfeat.svm import SVMClassifier, save_svm

    path_d, path_e, _, _ = two_stores
    stores = open_stores([path_d, path_e])
    spec = FeatureSpec(("D", "E"), (256, 512), "average")
    x = design_matrix(stores, IDS, spec)
    y = np.array(["a", "b", "c", "a", "b", "c", "a", "b"])
    clf = SVMClassifier(C=1.0).fit(x, y)
    save_svm(tmp_path / "m.h5", clf, {"note": "mine", **feature_record(stores, spec)})
    ids, scores = predict_store(tmp_path / "m.h5", [path_e, path_d])  # any store order
    assert ids == IDS  # every image extracted in both stores, in the first net's store order
    np.testing.assert_allclose(scores, clf.decision_function(x), rtol=1e-6, atol=1e-9)
    ids, scores = predict_store((clf, feature_record(stores, spec)), [path_d, path_e], IDS[3:5])
    np.testing.assert_allclose(scores, clf.decision_function(x[3:5]), rtol=1e-6, atol=1e-9)
    # The raw path would take the nets in the wrong order without a word...
    swapped = design_matrix(stores, IDS, FeatureSpec(("E", "D"), (256, 512), "average"))
    assert not np.allclose(clf.decision_function(swapped), clf.decision_function(x))
    # ...while the model's record refuses stores that are not its features.
    make_store(tmp_path / "other_e.h5", IDS, store_settings(["E"], [256, 384, 512], flip=False))
    with pytest.raises(SettingsMismatch, match="does not match the features m.h5 was fit on"):
        predict_store(tmp_path / "m.h5", [path_d, tmp_path / "other_e.h5"])
    with pytest.raises(FeatureError, match="records no feature spec"):
        model_matrix({"note": "mine"}, stores, IDS)


# ----------------------------------------------------------------------------- spec


def test_feature_spec_validates_and_round_trips():
    spec = FeatureSpec(["D", "E"], [256, "384"], "average", True)
    assert spec.nets == ("D", "E") and spec.scales == (256, 384)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    assert (
        spec.to_dict()["block_norm"] is True and "per (net, Q)" in spec.to_dict()["normalization"]
    )
    assert FeatureSpec(("D",), (256, 384), "stack").dim(4096) == 8192
    assert FeatureSpec(("D", "E"), (256, 384, 512), "average").dim(4096) == 8192
    for bad, match in [
        ({"nets": (), "scales": (256,)}, "No nets"),
        ({"nets": ("D", "D"), "scales": (256,)}, "repeat"),
        ({"nets": ("D",), "scales": ()}, "No scales"),
        ({"nets": ("D",), "scales": (256, 256)}, "distinct"),
        ({"nets": ("D",), "scales": ("big",)}, "integers"),
        ({"nets": ("D",), "scales": (256,), "aggregate": "max"}, "Valid: stack, average"),
        ({"nets": ("D",), "scales": (256,), "block_norm": "yes"}, "true or false"),
        ({"nets": "D", "scales": (256,)}, "sequences"),
    ]:
        with pytest.raises(FeatureError, match=match):
            FeatureSpec(**bad)
    with pytest.raises(FeatureError, match="lacks 'scales'"):
        FeatureSpec.from_dict({"nets": ["D"]})


def test_resolve_spec_defaults_and_aliases(tmp_path):
    make_store(tmp_path / "d.h5", IDS, store_settings(["D"], [256, 384, 512]))
    make_store(tmp_path / "e.h5", IDS, store_settings(["E"], [384, 512, 640]))
    stores = open_stores([tmp_path / "e.h5", tmp_path / "d.h5"])
    spec = resolve_spec(stores)
    assert spec.nets == ("E", "D") and spec.scales == (384, 512)  # store order; common scales
    d_only = open_stores([tmp_path / "d.h5"])
    assert resolve_spec(d_only, nets=["vgg16"], aggregate="average").nets == ("D",)
    assert resolve_spec(d_only).scales == (256, 384, 512)
    with pytest.raises(
        FeatureError, match=r"e\.h5 holds none of the nets used \(D\); leave it out"
    ):
        resolve_spec(stores, nets=["D"])


# ----------------------------------------------------------------------------- refusals


def test_missing_ids_are_refused_with_counts_and_examples(two_stores):
    path_d, path_e, _, _ = two_stores
    with pytest.raises(FeatureError) as err:
        design_matrix([path_d, path_e], [*IDS, "extra1", "extra2"], FeatureSpec(("D", "E"), (256,)),
                      role="training")  # fmt: skip
    assert str(err.value).startswith(
        "2 of 10 training ids are missing from voc_D.h5 (e.g. extra1, extra2)"
    )
    assert "\n" not in str(err.value)


def test_failed_ids_are_refused_with_reasons(tmp_path):
    failed = {"000002": "cannot identify image file", "000005": "image is empty"}
    make_store(tmp_path / "d.h5", IDS, store_settings(["D"], [256]), failed=failed)
    with pytest.raises(FeatureError, match=r"^2 of 8 test ids failed extraction in d\.h5 "
                       r"\(e\.g\. 000002: cannot identify image file; 000005: image is empty\)"):  # fmt: skip
        design_matrix([tmp_path / "d.h5"], IDS, FeatureSpec(("D",), (256,)), role="test")
    ok = [i for i in IDS if i not in failed]
    assert design_matrix([tmp_path / "d.h5"], ok, FeatureSpec(("D",), (256,))).shape == (6, 16)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_rows_are_refused(tmp_path, bad):
    settings = store_settings(["D"], [256, 384])
    data = {k: np.ones((len(IDS), 16), np.float32) for k in [("D", 256), ("D", 384)]}
    data["D", 384][3, 5] = bad
    data["D", 384][6, 0] = bad
    make_store(tmp_path / "d.h5", IDS, settings, data=data)
    with pytest.raises(FeatureError, match=r"2 of 8 training images have NaN or inf descriptors "
                       r"in d\.h5 \(net D, Q 384\) \(e\.g\. 000004, 000007\)"):  # fmt: skip
        design_matrix([tmp_path / "d.h5"], IDS, FeatureSpec(("D",), (256, 384)), role="training")


@pytest.mark.parametrize(
    "override, key",
    [
        ({"flip": False}, "flip"),
        ({"layer": "fc6"}, "layer"),
        ({"precision": "bf16"}, "precision"),
        ({"interpolation": "nearest"}, "interpolation"),
        ({"max_side": 1024}, "max_side"),
    ],
)
def test_fusing_stores_with_different_settings_is_refused(tmp_path, override, key):
    make_store(tmp_path / "d.h5", IDS, store_settings(["D"], [256]))
    make_store(tmp_path / "e.h5", IDS, store_settings(["E"], [256], **override))
    with pytest.raises(SettingsMismatch, match=rf"Cannot fuse e\.h5 with d\.h5: {key} differs"):
        design_matrix([tmp_path / "d.h5", tmp_path / "e.h5"], IDS, FeatureSpec(("D", "E"), (256,)))
    with pytest.raises(SettingsMismatch, match=key):
        resolve_spec(open_stores([tmp_path / "d.h5", tmp_path / "e.h5"]))


def test_store_request_errors(tmp_path):
    make_store(tmp_path / "d.h5", IDS, store_settings(["D"], [256, 384]))
    make_store(tmp_path / "d2.h5", IDS, store_settings(["D"], [256]))
    make_store(tmp_path / "e.h5", IDS, store_settings(["E"], [512]))
    d, d2, e = (FeatureStore(tmp_path / n) for n in ("d.h5", "d2.h5", "e.h5"))
    cases = [
        ([d], FeatureSpec(("E",), (256,)), r"Net 'E' is in none of the stores \(d\.h5: D\)"),
        ([d], FeatureSpec(("D",), (256, 512)), r"Scale 512 is not in d\.h5 \(it has 256, 384\)"),
        ([d, d2], FeatureSpec(("D",), (256,)), r"Net D is in several stores \(d\.h5, d2\.h5\)"),
        ([d, e], FeatureSpec(("D",), (256,)), r"e\.h5 holds none of the nets used \(D\)"),
        ([d, tmp_path / "d.h5"], FeatureSpec(("D",), (256,)), "is given twice"),
        ([], FeatureSpec(("D",), (256,)), "No feature stores"),
    ]
    for stores, spec, match in cases:
        with pytest.raises(VggfeatError, match=match):
            design_matrix(stores, IDS, spec)
    with pytest.raises(FeatureError, match=r"share no scale \(d\.h5: 256, 384; e\.h5: 512\)"):
        resolve_spec([d, e])
    with pytest.raises(FeatureError, match="Net 'vgg19' is in none"):
        resolve_spec([d], nets=["vgg19"])
    with pytest.raises(FeatureError, match="No training images"):
        design_matrix([d], [], FeatureSpec(("D",), (256,)), role="training")


# ----------------------------------------------------------------------------- provenance


def test_provenance_records_paths_settings_and_hashes(two_stores):
    path_d, path_e, _, _ = two_stores
    prov = feature_provenance(open_stores([path_d, path_e]))
    assert [s["path"] for s in prov["stores"]] == [str(path_d), str(path_e)]
    assert prov["stores"][1]["weights_sha256"]["E"] == weights_provenance("E")["sha256"]
    assert prov["stores"][0]["settings"]["flip"] is True and prov["stores"][0]["nets"] == ["D"]


@pytest.mark.parametrize(
    "change, match",
    [
        ({"weights": {"D": weights_provenance("D", sha="0" * 64)}}, r"net D weights\.sha256 is '0000"),
        ({"weights": {"D": weights_provenance("D", "caffe")}}, r"net D weights\.preprocess\.channel_order is 'BGR' there but 'RGB'"),
        ({"weights": {"D": weights_provenance("D", sha=None)}}, r"weights\.label"),
        ({"flip": False}, r"net D flip is False there but True in the model"),
        ({"layer": "pool5"}, "layer"),
        ({"precision": "fp16"}, "precision"),
        ({"dim": 32}, "dim"),
    ],
)  # fmt: skip
def test_check_provenance_refuses_other_features(tmp_path, change, match):
    fit_path = tmp_path / "fit" / "d.h5"
    fit_path.parent.mkdir()
    make_store(fit_path, IDS, store_settings(["D"], [256, 384]))
    prov = feature_provenance(open_stores([fit_path]))
    spec = FeatureSpec(("D",), (256, 384))
    # The same settings in another file (say, the test images) pass.
    make_store(tmp_path / "same.h5", ["x", "y"], store_settings(["D"], [256, 384, 512]))
    check_provenance(prov, open_stores([tmp_path / "same.h5"]), spec)

    settings = store_settings(["D"], [256, 384], **change)
    if "dim" in change:
        settings["dim"] = change["dim"]
    make_store(tmp_path / "other.h5", ["x", "y"], settings)
    with pytest.raises(SettingsMismatch, match=match) as err:
        check_provenance(prov, open_stores([tmp_path / "other.h5"]), spec, model="m.h5")
    assert str(err.value).startswith("other.h5 does not match the features m.h5 was fit on")


def test_check_provenance_needs_the_model_scales_and_nets(tmp_path):
    make_store(tmp_path / "d.h5", IDS, store_settings(["D"], [256, 384]))
    prov = feature_provenance(open_stores([tmp_path / "d.h5"]))
    make_store(tmp_path / "small.h5", IDS, store_settings(["D"], [256]))
    with pytest.raises(FeatureError, match=r"Scale 384 is not in small\.h5"):
        check_provenance(
            prov, open_stores([tmp_path / "small.h5"]), FeatureSpec(("D",), (256, 384))
        )
    make_store(tmp_path / "e.h5", IDS, store_settings(["E"], [256, 384]))
    with pytest.raises(FeatureError, match="Net 'D' is in none of the stores"):
        check_provenance(prov, open_stores([tmp_path / "e.h5"]), FeatureSpec(("D",), (256,)))
