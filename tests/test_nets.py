"""Table 1/2 nets, torchvision compatibility, and the fully-convolutional view."""

import pytest
import torch
import torchvision

from vggfeat.errors import VggfeatError
from vggfeat.nets import CONFIGS, TORCHVISION_NAMES, VGG, DenseVGG, canonical_net

# Table 2 of the paper, in millions.
TABLE_2 = {"A": 133, "A-LRN": 133, "B": 133, "C": 134, "D": 138, "E": 144}


@pytest.mark.parametrize("net", list(CONFIGS))
def test_parameter_counts_match_table_2(net):
    with torch.device("meta"):
        model = VGG(net)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == TABLE_2[net]


@pytest.mark.parametrize("net,tv_name", list(TORCHVISION_NAMES.items()))
def test_state_dict_keys_and_shapes_match_torchvision(net, tv_name):
    with torch.device("meta"):
        ours = VGG(net).state_dict()
        theirs = getattr(torchvision.models, tv_name)().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_canonical_net_names_and_error():
    assert canonical_net("vgg16") == "D" and canonical_net("e") == "E"
    assert canonical_net("a-lrn") == "A-LRN"
    with pytest.raises(VggfeatError, match=r"Unknown net 'F'. Valid nets: .*D \(vgg16\)"):
        canonical_net("F")


def _torchvision_fc7(tv: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """fc7 after ReLU through torchvision's own classifier path (eval mode)."""
    pooled = torch.flatten(tv.avgpool(tv.features(x)), 1)
    return tv.classifier[:5](pooled)


@pytest.mark.slow
@pytest.mark.parametrize("tv_name,net", [("vgg16", "D"), ("vgg19", "E")])
def test_golden_dense_fc7_equals_torchvision_classifier_at_224(tv_name, net):
    """Full width: dense fc7 (7x7/1x1 convs + GAP) on 224x224 == torchvision's fc7."""
    torch.manual_seed(0)
    tv = getattr(torchvision.models, tv_name)().eval()
    ours = VGG(net)
    ours.load_state_dict(tv.state_dict())
    dense = DenseVGG(ours.eval())
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = _torchvision_fc7(tv, x)
        got = dense(x, layer="fc7")
        logits = dense(x, layer="fc8")
    assert got.shape == (2, 4096)
    # Same math, other summation order (7x7 conv vs flatten + matmul): float32 rounding only.
    scale = expected.abs().max().item()
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(logits, tv(x), rtol=0, atol=1e-5 * tv(x).abs().max().item())


def test_dense_view_shares_weights():
    model = VGG("D", width=1 / 16)
    dense = DenseVGG(model)
    kernel, _ = dense.fc_conv(0)
    assert kernel.shape == (256, 32, 7, 7)
    assert kernel.data_ptr() == model.classifier[0].weight.data_ptr()
    with torch.no_grad():
        model.classifier[0].weight.add_(1.0)
    assert torch.equal(dense.fc_conv(0)[0].reshape(256, -1), model.classifier[0].weight)


@pytest.mark.parametrize("net", ["A-LRN", "C"])
def test_non_torchvision_configs_run_densely(net):
    torch.manual_seed(0)
    dense = DenseVGG(VGG(net, width=1 / 16).eval())
    with torch.no_grad():
        out = dense(torch.randn(1, 3, 256, 288))
    assert out.shape == (1, 256) and torch.isfinite(out).all()


def test_dense_map_size_and_small_input_error():
    dense = DenseVGG(VGG("D", width=1 / 16).eval())
    with torch.no_grad():
        maps, _ = dense.forward_maps(torch.randn(1, 3, 256, 320))
        assert maps.shape[-2:] == (8 - 6, 10 - 6)  # pool5 8x10 -> fc6 (7x7 valid conv) 2x4
        with pytest.raises(VggfeatError, match="224"):
            dense(torch.randn(1, 3, 200, 300))


@pytest.mark.parametrize("multiply", [False, True])
def test_masked_batch_equals_single_images(multiply):
    """Both ways of zeroing padding (slices on the CPU, a mask multiply on GPUs) are exact."""
    torch.manual_seed(1)
    dense = DenseVGG(VGG("D", width=1 / 16).eval())
    dense.mask_multiply = multiply
    shapes = [(224, 224), (256, 320), (230, 250)]
    singles = [torch.randn(1, 3, *s) for s in shapes]
    canvas = torch.zeros(3, 3, 256, 320)
    for i, x in enumerate(singles):
        canvas[i, :, : x.shape[2], : x.shape[3]] = x[0]
        canvas[i, :, x.shape[2] :, :] = 5.0  # garbage in the padding must not leak in
        canvas[i, :, :, x.shape[3] :] = 5.0
    with torch.no_grad():
        batched = dense(canvas, sizes=torch.tensor(shapes))
        expected = torch.cat([dense(x) for x in singles])
    torch.testing.assert_close(batched, expected, rtol=1e-5, atol=1e-6)
