import pytest
import torch
import torch.nn.functional as F

from adt_fast.models import ARCHS, build_model

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
