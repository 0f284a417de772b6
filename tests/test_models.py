import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adt_fast.models import ARCHS, build_model
from adt_fast.models.classifiers import BasicBlock, PreActWideBlock

SMALL_ARCHS = ("small-cnn", "resnet18")


@pytest.fixture(scope="module")
def wide_resnet():
    torch.manual_seed(0)
    return build_model("wrn-28-10", num_classes=10).eval()


def _built(arch, **kwargs):
    torch.manual_seed(0)
    return build_model(arch, **kwargs).eval()


def _check_split_matches_forward(model, x, num_classes):
    with torch.no_grad():
        features = model.features(x)
        logits = model(x)
    assert features.dim() == 4 and features.shape[0] == x.shape[0]
    assert logits.shape == (x.shape[0], num_classes)
    torch.testing.assert_close(model.head(features), logits)


def test_wide_resnet_shapes_and_config(wide_resnet):
    x = torch.rand(2, 3, 32, 32)
    _check_split_matches_forward(wide_resnet, x, 10)
    assert wide_resnet.features(x).shape == (2, 640, 8, 8)
    assert wide_resnet.config == {"arch": "wrn-28-10", "num_classes": 10, "in_channels": 3, "image_size": 32}
    # The standard WRN-28-10 for 10 classes has 36,479,194 parameters.
    assert sum(p.numel() for p in wide_resnet.parameters()) == 36_479_194


@pytest.mark.parametrize("arch", SMALL_ARCHS)
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 8), (3, 8)])
def test_small_archs_build_for_each_input_shape(arch, channels, size):
    model = _built(arch, num_classes=7, in_channels=channels, image_size=size)
    _check_split_matches_forward(model, torch.rand(4, channels, size, size), 7)


def test_resnet18_is_the_cifar_variant():
    model = _built("resnet18", num_classes=10)
    assert model.features(torch.rand(2, 3, 32, 32)).shape == (2, 512, 4, 4)
    assert sum(p.numel() for p in model.parameters()) == 11_173_962


@pytest.mark.parametrize("arch", SMALL_ARCHS)
def test_channels_last_gives_the_same_logits(arch):
    model = _built(arch, num_classes=10)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        actual = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_wide_resnet_accepts_channels_last(wide_resnet):
    x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert wide_resnet(x).shape == (2, 10)


def test_config_rebuilds_an_identically_shaped_model():
    model = _built("small-cnn", num_classes=5, in_channels=1, image_size=8)
    rebuilt = build_model(**model.config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(rebuilt.eval()(x), model(x))


def test_input_gradients_flow_through_features():
    model = _built("small-cnn", num_classes=10)
    x = torch.rand(2, 3, 8, 8, requires_grad=True)
    model.features(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_arch_names_the_argument_and_choices():
    with pytest.raises(ValueError, match="arch") as error:
        build_model("vgg16", num_classes=10)
    assert all(arch in str(error.value) for arch in ARCHS)


@pytest.mark.parametrize("argument,value", [("num_classes", 0), ("in_channels", 0), ("image_size", 4), ("num_classes", 2.5)])
def test_bad_sizes_name_the_argument(argument, value):
    kwargs = {"num_classes": 10, argument: value}
    with pytest.raises(ValueError, match=argument):
        build_model("small-cnn", **kwargs)


def test_small_cnn_learns_the_synthetic_dataset():
    from adt_fast.data import iterate_batches, load

    torch.manual_seed(0)
    x_train, y_train = load("synthetic", "train")
    x_test, y_test = load("synthetic", "test")
    model = build_model("small-cnn", num_classes=10, in_channels=3, image_size=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        for xb, yb in iterate_batches(x_train, y_train, 32, shuffle=True, generator=generator):
            optimizer.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            optimizer.step()
    with torch.no_grad():
        accuracy = (model.eval()(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.9


# ----------------------------------------------------------------------------- Normalized


def _normalized(model):
    from adt_fast.models import Normalized

    return Normalized(model, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]).eval()


def test_normalized_keeps_the_feature_split_only_when_the_model_has_one():
    x = torch.rand(2, 3, 8, 8)
    wrapped = _normalized(_built("small-cnn", num_classes=10, in_channels=3, image_size=8))
    _check_split_matches_forward(wrapped, x, 10)
    torch.testing.assert_close(wrapped.features(x), wrapped.model.features((x - 0.5) / 0.25))
    plain = _normalized(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)))
    assert not hasattr(plain, "features") and not hasattr(plain, "head")


def test_a_copy_of_a_normalized_model_computes_features_with_its_own_weights():
    import copy

    original = _normalized(_built("small-cnn", num_classes=10, in_channels=3, image_size=8))
    duplicate = copy.deepcopy(original)
    with torch.no_grad():
        for parameter in duplicate.parameters():
            parameter.add_(1.0)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(duplicate.features(x), original.features(x))
        torch.testing.assert_close(duplicate.head(duplicate.features(x)), duplicate(x))


def test_a_normalized_model_saves_and_loads_whole_and_by_state_dict(tmp_path):
    model = _normalized(_built("small-cnn", num_classes=10, in_channels=3, image_size=8))
    keys = list(model.state_dict())
    assert not any(key.startswith("head.") for key in keys)
    assert len(keys) == len(set(keys)) == len(model.model.state_dict()) + 2  # + mean, std
    torch.save(model, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.features(x), model.features(x))
        torch.testing.assert_close(loaded(x), model(x))
    fresh = _normalized(_built("small-cnn", num_classes=10, in_channels=3, image_size=8))
    with torch.no_grad():
        for parameter in fresh.parameters():
            parameter.zero_()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


# Each block's formula, WRN's strides, the heads and the initialisation (mutation review 2026-12-05).
def _randomise_batchnorm(module):
    """Non-trivial affine parameters and running statistics, so BN is not near the identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (m for m in module.modules() if isinstance(m, nn.BatchNorm2d)):
            n = bn.num_features
            bn.weight.copy_(torch.rand(n, generator=generator) + 0.5)
            bn.bias.copy_(torch.randn(n, generator=generator))
            bn.running_mean.copy_(torch.randn(n, generator=generator))
            bn.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
    return module.eval()


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (4, 8, 2)])
def test_pre_activation_wide_block_computes_its_formula(cin, cout, stride):
    """Zagoruyko & Komodakis (and the WRN code of Madry et al., TRADES, ADT):
    a = relu(bn1(x)); out = conv2(relu(bn2(conv1(a)))) + (x, or shortcut(a) when the shape changes)."""
    torch.manual_seed(0)
    block = _randomise_batchnorm(PreActWideBlock(cin, cout, stride))
    x = torch.randn(2, cin, 8, 8)
    with torch.no_grad():
        a = F.relu(block.bn1(x))
        residual = x if block.shortcut is None else block.shortcut(a)
        expected = block.conv2(F.relu(block.bn2(block.conv1(a)))) + residual
        torch.testing.assert_close(block(x), expected)


@pytest.mark.parametrize("cin,cout,stride", [(4, 4, 1), (4, 8, 2)])
def test_basic_block_computes_its_formula(cin, cout, stride):
    """He et al. (2016): relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    torch.manual_seed(0)
    block = _randomise_batchnorm(BasicBlock(cin, cout, stride))
    x = torch.randn(2, cin, 8, 8)
    with torch.no_grad():
        out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        expected = F.relu(out + block.shortcut(x))
        torch.testing.assert_close(block(x), expected)


def test_wide_resnet_groups_have_strides_1_2_2_and_end_in_bn_relu():
    model = _built("wrn-28-10", num_classes=10)
    blocks = [m for m in model.body if isinstance(m, PreActWideBlock)]
    assert len(blocks) == 12
    assert [b.conv1.stride[0] for b in blocks] == [1, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1]
    assert [b.conv1.out_channels for b in blocks[::4]] == [160, 320, 640]
    assert isinstance(model.body[-2], nn.BatchNorm2d) and isinstance(model.body[-1], nn.ReLU)


@pytest.mark.parametrize("arch", ["small-cnn", "resnet18"])
def test_features_are_post_relu(arch):
    model = _randomise_batchnorm(_built(arch, num_classes=10, in_channels=3, image_size=8))
    with torch.no_grad():
        assert model.features(torch.rand(4, 3, 8, 8)).min() >= 0


def test_small_cnn_is_three_conv_bn_relu_with_one_stride_2():
    model = _built("small-cnn", num_classes=10, in_channels=3, image_size=8)
    assert model.features(torch.rand(2, 3, 8, 8)).shape == (2, 64, 4, 4)
    assert sum(p.numel() for p in model.parameters()) == 57_130
    convs = [m for m in model.body if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.stride[0]) for c in convs] == [(32, 1), (64, 2), (64, 1)]


@pytest.mark.parametrize("arch", ["small-cnn", "resnet18", "madry-cnn"])
def test_heads_compute_their_formula(arch):
    """Global average pooling then the linear layer; Madry et al.'s head: flatten, FC + ReLU, FC."""
    size = 28 if arch == "madry-cnn" else 8
    model = _built(arch, num_classes=10, in_channels=1, image_size=size)
    features = torch.randn(3, *model.features(torch.rand(1, 1, size, size)).shape[1:])
    with torch.no_grad():
        if arch == "madry-cnn":
            expected = model.head.linear(F.relu(model.head.hidden(features.flatten(1))))
        else:
            expected = model.head.linear(features.mean(dim=(2, 3)))
        torch.testing.assert_close(model.head(features), expected)


def test_convolutions_get_he_initialisation_on_fan_out():
    """std sqrt(2 / (k * k * out_channels)), as the WRN / ResNet code (n = k*k*out)."""
    model = _built("resnet18", num_classes=10)
    for conv in (model.body[0], model.body[5].conv1, model.body[7].conv1):  # in != out: fan_in differs
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1), conv


@pytest.mark.parametrize("arch", ["wrn-28-10", "resnet18", "small-cnn"])
def test_batchnorm_layers_have_pytorch_defaults(arch):
    """momentum 0.1 and eps 1e-5 (TF's decay 0.9 in Madry et al.'s WRN; PyTorch's defaults in
    TRADES' and the authors' code)."""
    model = _built(arch, num_classes=10)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.1 and bn.eps == 1e-5 for bn in bns)


def test_weights_with_flipped_bytes_are_refused_by_load_weights(tmp_path):
    """eval --model --weights reads a plain state dict with torch.load, which checks no CRC-32s:
    changed weight bytes once loaded silently (as checkpoints did before checkpoint.load checked)."""
    import zipfile

    from adt_fast.models.external import ExternalModelError, load_weights
    model = build_model("small-cnn", 10)
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)
    load_weights(build_model("small-cnn", 10), path)  # intact: loads
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        member = max(archive.infolist(), key=lambda info: info.file_size)
        offset = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data[offset + 100:offset + 104] = bytes(255 - b for b in data[offset + 100:offset + 104])
    path.write_bytes(bytes(data))
    torch.load(path, weights_only=True)  # torch alone does not notice
    with pytest.raises(ExternalModelError, match=f"weights file {path} is corrupt or truncated \\(its member "):
        load_weights(build_model("small-cnn", 10), path)
