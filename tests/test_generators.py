"""Shapes and contracts of the amortised-ADT networks (Tables 7 and 8)."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adt_fast.models.generators import MODES, PerturbationGenerator, QNetwork, ResidualBlock

SIZES = [(3, 32), (1, 8)]


def _inputs(batch, channels, size, mode, noise_dim=64):
    inputs = torch.randn(batch, 3 * channels, size, size)
    z = torch.rand(batch, noise_dim) * 2 - 1 if mode == "implicit" else None
    return inputs, z


@pytest.mark.parametrize("channels,size", SIZES)
@pytest.mark.parametrize("mode", MODES)
def test_generator_output_shapes(mode, channels, size):
    torch.manual_seed(0)
    gen = PerturbationGenerator(channels, size, mode, width=8)
    inputs, z = _inputs(2, channels, size, mode)
    out = gen(inputs, z)
    expected_channels = 2 * channels if mode == "explicit" else channels
    assert out.shape == (2, expected_channels, size, size)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in gen.parameters())


def test_generator_paper_configuration_on_cifar_shapes():
    """The default (width 256, noise 64) network of Table 7 on 3x32x32 inputs."""
    torch.manual_seed(0)
    gen = PerturbationGenerator(3, 32, "implicit")
    assert gen.noise_encoder[2].out_features == 1024           # FC 256 -> FC 1024 -> 1x32x32
    assert gen.noise_encoder[0].out_features == 256
    convs = [m for m in gen.body.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert [c.out_channels for c in convs] == [256, 512, 512, 512, 512, 256, 256, 3]
    assert convs[0].in_channels == 10                          # [x, g1, g2] + the noise channel
    assert all(c.stride == (1, 1) for c in gen.modules() if isinstance(c, nn.Conv2d))
    gen.eval()
    with torch.no_grad():
        out = gen(*_inputs(1, 3, 32, "implicit"))
    assert out.shape == (1, 3, 32, 32)


def test_every_conv_but_the_last_is_followed_by_batchnorm():
    gen = PerturbationGenerator(1, 8, "explicit", width=8)
    layers = list(gen.body)
    assert isinstance(layers[0], nn.Conv2d) and isinstance(layers[1], nn.BatchNorm2d)
    assert isinstance(layers[2], nn.ReLU)
    assert [type(m) for m in layers[3:6]] == [ResidualBlock] * 3
    assert isinstance(layers[-1], nn.Conv2d) and layers[-1].out_channels == 2
    block = layers[3]
    assert isinstance(block.bn1, nn.BatchNorm2d) and isinstance(block.bn2, nn.BatchNorm2d)
    assert isinstance(block.shortcut[1], nn.BatchNorm2d)       # width changes: 1x1 conv + BN
    assert isinstance(layers[4].shortcut, nn.Identity)


def test_generator_works_for_non_square_images():
    gen = PerturbationGenerator(2, (8, 12), "implicit", noise_dim=5, width=8)
    out = gen(torch.randn(3, 6, 8, 12), torch.rand(3, 5))
    assert out.shape == (3, 2, 8, 12)


def test_generator_rejects_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        PerturbationGenerator(3, 32, "gaussian")
    gen = PerturbationGenerator(1, 8, "implicit", width=4)
    with pytest.raises(ValueError, match="noise"):
        gen(torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        gen(torch.randn(2, 1, 8, 8), torch.rand(2, 64))
    with pytest.raises(ValueError, match="built for"):
        gen(torch.randn(2, 3, 9, 9), torch.rand(2, 64))
    with pytest.raises(ValueError, match="no noise"):
        PerturbationGenerator(1, 8, "explicit", width=4)(torch.randn(2, 3, 8, 8), torch.rand(2, 64))


@pytest.mark.parametrize("channels,size", SIZES)
def test_q_network_shapes_and_positive_std(channels, size):
    torch.manual_seed(0)
    q = QNetwork(channels, size)
    mean, std = q(torch.rand(4, channels, size, size) * 2 - 1)
    assert mean.shape == std.shape == (4, 64)
    assert (std >= q.min_std).all() and torch.isfinite(mean).all()
    (mean.sum() + std.sum()).backward()
    assert all(p.grad is not None for p in q.parameters())


def test_q_network_paper_layers():
    q = QNetwork(3, 32)
    convs = [m for m in q.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (32, 5, 1), (64, 4, 2), (128, 4, 1), (256, 4, 2)]
    assert q.out.out_features == 128
    assert sum(isinstance(m, nn.LeakyReLU) for m in q.modules()) == 4


def test_q_std_stays_finite_for_extreme_outputs():
    q = QNetwork(1, 8, noise_dim=3)
    with torch.no_grad():
        q.out.bias[3:] = -1e4
        q.out.bias[:3] = 0
        q.out.weight.zero_()
    _, std = q(torch.zeros(2, 1, 8, 8))
    assert torch.allclose(std, torch.full_like(std, q.min_std))
    with torch.no_grad():
        q.out.bias[3:] = 1e4
    _, std = q(torch.zeros(2, 1, 8, 8))
    assert torch.isfinite(std).all()


# The residual block's formula, the noise encoder, the q-network and both initialisations
# (mutation review 2026-12-05).
@pytest.mark.parametrize("cin,cout", [(4, 8), (8, 8)])
def test_residual_block_computes_its_formula(cin, cout):
    """The authors' ResnetBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""
    torch.manual_seed(0)
    block = ResidualBlock(cin, cout).eval()
    with torch.no_grad():
        for bn in (m for m in block.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.bias.normal_()
            bn.running_mean.normal_()
    x = torch.randn(2, cin, 6, 6)
    with torch.no_grad():
        out = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        torch.testing.assert_close(block(x), F.relu(out + block.shortcut(x)))


def test_noise_encoder_is_fc_relu_fc_relu_and_its_map_reaches_the_output():
    """C.2 and the authors' code: z -> FC(256) + ReLU -> FC(H*W) + ReLU -> a 1xHxW channel."""
    torch.manual_seed(0)
    gen = PerturbationGenerator(1, 8, "implicit", noise_dim=5, width=4).eval()
    assert [type(m) for m in gen.noise_encoder] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU]
    z = torch.rand(3, 5) * 2 - 1
    assert gen.noise_encoder(z).min() >= 0
    inputs = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        a, b = gen(inputs, z), gen(inputs, -z)
    assert not torch.allclose(a, b)  # the noise changes the perturbation: a distribution, not a point


def test_generator_initialisation_is_pix2pix_normal_002():
    """The authors' init_net(init_type='normal', gain 0.02): conv/linear weights N(0, 0.02),
    biases 0, BatchNorm weights N(1, 0.02) (not exactly 1), BatchNorm biases 0."""
    torch.manual_seed(0)
    gen = PerturbationGenerator(3, 32, "implicit", width=32)
    weights = torch.cat([m.weight.flatten() for m in gen.modules() if isinstance(m, (nn.Conv2d, nn.Linear))])
    assert weights.mean().abs() < 1e-3 and weights.std().item() == pytest.approx(0.02, rel=0.05)
    bn = torch.cat([m.weight for m in gen.modules() if isinstance(m, nn.BatchNorm2d)]).detach()
    assert bn.mean().item() == pytest.approx(1.0, abs=0.01) and bn.std().item() == pytest.approx(0.02, rel=0.2)


def test_q_network_uses_leaky_relu_001_and_average_pooling():
    torch.manual_seed(0)
    q = QNetwork(1, 24, noise_dim=3).eval()
    slopes = {m.negative_slope for m in q.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.01}
    t = torch.rand(2, 1, 24, 24) * 2 - 1
    with torch.no_grad():
        raw = q.out(q.features(t).mean(dim=(2, 3)))
        mean, std = q(t)
    torch.testing.assert_close(mean, raw[:, :3])
    torch.testing.assert_close(std, F.softplus(raw[:, 3:]) + q.min_std)


def test_q_network_initialisation_is_the_authors():
    """Encoder in the authors' generator.py: conv weights N(0, sqrt(2 / (k*k*out)))."""
    torch.manual_seed(0)
    q = QNetwork(3, 32)
    for conv in (m for m in q.modules() if isinstance(m, nn.Conv2d)):
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
        assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)
