"""Tests of the network backbones in ``gddim_lightning.nets`` (CPU, fast)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gddim_lightning.nets import MLP, FourierEmbedding, SinusoidalEmbedding, UNet
from gddim_lightning.nets.embeddings import broadcast_time
from gddim_lightning.nets.unet import _AttnBlock, group_count


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def tiny_unet(in_channels: int = 1, **kwargs) -> UNet:
    """The tiny 8x8 configuration used throughout (and for the benchmark)."""
    cfg = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
    cfg.update(kwargs)
    return UNet(in_channels, **cfg)


def perturb_output_layer(net: UNet) -> None:
    """Make the zero-initialised output conv non-zero so gradients flow through it."""
    with torch.no_grad():
        net.out_conv.weight.normal_(0.0, 0.05)
        net.out_conv.bias.normal_(0.0, 0.05)


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


# --------------------------------------------------------------------------- embeddings


@pytest.mark.parametrize("cls", [SinusoidalEmbedding, FourierEmbedding])
@pytest.mark.parametrize("dim", [2, 7, 64])
def test_embedding_shapes_and_range(cls, dim):
    emb = cls(dim)
    out = emb(torch.rand(5))
    assert out.shape == (5, dim)
    assert out.dtype == torch.float32
    assert out.abs().max() <= 1.0 + 1e-6
    assert emb(0.3).shape == (1, dim)
    assert emb(torch.tensor(0.3)).shape == (1, dim)


def test_fourier_embedding_is_frozen_and_seed_independent():
    torch.manual_seed(1)
    a = FourierEmbedding(32)
    state = torch.get_rng_state()
    b = FourierEmbedding(32)
    assert torch.equal(torch.get_rng_state(), state)  # does not consume the global RNG
    torch.manual_seed(123)
    c = FourierEmbedding(32)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.weight, c.weight)
    assert list(a.parameters()) == []
    t = torch.rand(4)
    assert torch.equal(a(t), c(t))


def test_sinusoidal_embedding_distinguishes_times():
    emb = SinusoidalEmbedding(64)
    out = emb(torch.tensor([0.0, 1e-3, 0.5, 1.0]))
    dists = torch.cdist(out, out)
    assert (dists + torch.eye(4) > 1e-2).all()


def test_broadcast_time():
    assert broadcast_time(0.5, 3).shape == (3,)
    assert broadcast_time(torch.tensor(0.5), 3).tolist() == [0.5] * 3
    assert broadcast_time(torch.rand(3, 1), 3).shape == (3,)
    with pytest.raises(ValueError, match=r"t has shape \(2,\).*batch has 3"):
        broadcast_time(torch.rand(2), 3)


# --------------------------------------------------------------------------- MLP


@pytest.mark.parametrize(("in_dim", "out_dim", "expected"), [(2, None, 2), (4, 4, 4), (4, 2, 2)])
@pytest.mark.parametrize("batch", [1, 5])
def test_mlp_shapes(in_dim, out_dim, expected, batch):
    net = MLP(in_dim, out_dim, hidden=32, depth=2, time_dim=16)
    u = torch.randn(batch, in_dim)
    for t in (0.25, torch.tensor(0.25), torch.rand(batch)):
        out = net(u, t)
        assert out.shape == (batch, expected)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp_output_nonzero_and_time_dependent(embedding):
    net = MLP(2, hidden=32, depth=2, time_dim=16, embedding=embedding)
    u = torch.randn(6, 2)
    a, b = net(u, 0.1), net(u, 0.9)
    assert a.abs().max() > 1e-4  # small, not zero, init of the last layer
    assert not torch.allclose(a, b)


def test_mlp_gradients_reach_every_parameter():
    net = MLP(4, 4, hidden=32, depth=3, time_dim=16)
    net(torch.randn(7, 4), torch.rand(7)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_mlp_determinism():
    torch.manual_seed(7)
    a = MLP(2, hidden=32, depth=2)
    torch.manual_seed(7)
    b = MLP(2, hidden=32, depth=2)
    u, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(a(u, t), b(u, t))


def test_mlp_errors():
    with pytest.raises(ValueError, match=r"embedding='gauss'.*\['fourier', 'sinusoidal'\]"):
        MLP(2, embedding="gauss")
    with pytest.raises(ValueError, match=r"activation='swish'.*silu"):
        MLP(2, activation="swish")
    with pytest.raises(ValueError, match=r"MLP\(depth=0\)"):
        MLP(2, depth=0)
    net = MLP(2, hidden=16, depth=1, time_dim=8)
    with pytest.raises(ValueError, match=r"MLP\(in_dim=2\) expects input of shape \[B, 2\]"):
        net(torch.randn(3, 4), 0.5)
    with pytest.raises(ValueError, match=r"MLP\(in_dim=2\)"):
        net(torch.randn(3, 2, 1), 0.5)
    with pytest.raises(ValueError, match=r"batch has 3 elements"):
        net(torch.randn(3, 2), torch.rand(4))


# --------------------------------------------------------------------------- UNet


@pytest.mark.parametrize(
    ("in_ch", "out_ch", "size", "kwargs"),
    [
        (1, None, 8, {}),
        (2, 2, 8, {}),  # CLD on 1-channel data: state stacks positions and velocities
        (2, 1, 8, {"resblock_updown": True, "embedding": "sinusoidal"}),
        (3, None, 16, {"attn_resolutions": (8,)}),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_unet_shapes(in_ch, out_ch, size, kwargs, batch):
    net = tiny_unet(in_ch, out_channels=out_ch, **kwargs)
    u = torch.randn(batch, in_ch, size, size)
    for t in (0.5, torch.tensor(0.5), torch.rand(batch)):
        out = net(u, t)
        assert out.shape == (batch, out_ch or in_ch, size, size)
        assert torch.isfinite(out).all()


def test_unet_zero_output_at_init():
    net = tiny_unet(2)
    out = net(torch.randn(3, 2, 8, 8), torch.rand(3))
    assert torch.count_nonzero(out) == 0


def test_unet_attention_follows_feature_map_size():
    calls = []
    net = tiny_unet(3, attn_resolutions=(8,), num_res_blocks=2)
    for m in net.modules():
        if isinstance(m, _AttnBlock):
            m.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[-1]))
    net(torch.randn(2, 3, 16, 16), 0.5)
    # 2 down blocks + 1 up block at size 8, plus the middle block (also at 8).
    assert calls == [8] * 4
    calls.clear()
    net(torch.randn(2, 3, 32, 32), 0.5)  # no image_size: any valid size works
    assert calls == [16]  # only the middle block: no level has size 8 now
    calls.clear()
    net(torch.randn(2, 3, 8, 8), 0.5)  # level 0 now has size 8
    assert calls == [8, 8, 4, 8]


def test_unet_image_size_builds_only_used_attention():
    with_size = tiny_unet(1, image_size=8)
    without = tiny_unet(1)
    assert sum(isinstance(m, _AttnBlock) for m in with_size.modules()) == 3
    assert sum(isinstance(m, _AttnBlock) for m in without.modules()) == 5


@pytest.mark.parametrize("resblock_updown", [False, True])
def test_unet_gradients_reach_every_parameter(resblock_updown):
    net = tiny_unet(2, image_size=8, resblock_updown=resblock_updown)
    perturb_output_layer(net)
    net(torch.randn(3, 2, 8, 8), torch.rand(3)).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_unet_backward_finite_without_image_size():
    net = tiny_unet(3, attn_resolutions=(8,))
    perturb_output_layer(net)
    net(torch.randn(2, 3, 16, 16), 0.3).square().mean().backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert len(grads) > 0.8 * len(list(net.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)


def test_unet_determinism():
    nets = []
    for _ in range(2):
        torch.manual_seed(11)
        net = tiny_unet(2, dropout=0.1)
        perturb_output_layer(net)
        nets.append(net.eval())
    u, t = torch.randn(4, 2, 8, 8), torch.rand(4)
    a, b = nets[0](u, t), nets[1](u, t)
    assert a.abs().max() > 0
    assert torch.equal(a, b)


def test_unet_float64():
    net = tiny_unet(1).double()
    assert net(torch.randn(2, 1, 8, 8, dtype=torch.float64), 0.5).dtype == torch.float64


def test_unet_errors():
    net = tiny_unet(2, image_size=8)
    msg = r"UNet\(in_channels=2\) got input with 1 channels; for CLD"
    with pytest.raises(ValueError, match=msg):
        net(torch.randn(2, 1, 8, 8), 0.5)
    with pytest.raises(ValueError, match=r"H and W must be divisible by 2; got 7x8"):
        tiny_unet(2)(torch.randn(2, 2, 7, 8), 0.5)
    with pytest.raises(ValueError, match=r"divisible by 8; got 12x12"):
        tiny_unet(1, channel_mult=(1, 2, 2, 2))(torch.randn(1, 1, 12, 12), 0.5)
    with pytest.raises(ValueError, match=r"shape \[B, C, H, W\]; got shape \(2, 8, 8\)"):
        net(torch.randn(2, 8, 8), 0.5)
    with pytest.raises(ValueError, match=r"batch has 2 elements"):
        net(torch.randn(2, 2, 8, 8), torch.rand(3))
    with pytest.raises(ValueError, match=r"UNet\(image_size=8\) got input of size 16x16"):
        net(torch.randn(2, 2, 16, 16), 0.5)
    with pytest.raises(ValueError, match=r"embedding='gaussian'.*\['fourier', 'sinusoidal'\]"):
        tiny_unet(1, embedding="gaussian")
    with pytest.raises(ValueError, match=r"UNet\(image_size=10\).*multiple of"):
        tiny_unet(1, channel_mult=(1, 2, 2), image_size=10)
    with pytest.raises(ValueError, match=r"UNet\(channel_mult=\(\)\)"):
        tiny_unet(1, channel_mult=())


def test_group_count_divides_channels():
    for ch in (4, 16, 24, 48, 96, 128, 256, 3, 1):
        g = group_count(ch)
        assert ch % g == 0 and 1 <= g <= 32
    assert group_count(128) == 32 and group_count(16) == 4 and group_count(24) == 6


def test_unet_parameter_counts():
    # Tiny 8x8 benchmark config (base 32, mult (1, 2), 1 res block, attn at 4):
    # 684,577 parameters with image_size=8 (693,153 without: one extra level-0 attention).
    tiny = UNet(1, base_channels=32, channel_mult=(1, 2), num_res_blocks=1,
                attn_resolutions=(4,), image_size=8)
    assert n_params(tiny) == 684_577
    # Paper-scale CIFAR-10 (DDPM++ cont.): 57,633,027 parameters with image_size=32.
    cifar = UNet(3, base_channels=128, channel_mult=(1, 2, 2, 2), num_res_blocks=4,
                 attn_resolutions=(16,), image_size=32)
    assert 10_000_000 <= n_params(cifar) < 100_000_000
    assert n_params(cifar) == 57_633_027


def test_signatures_parse_with_jsonargparse():
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(UNet, "unet")
    parser.add_class_arguments(MLP, "mlp")
    cfg = parser.parse_args(
        ["--unet.in_channels=2", "--unet.channel_mult=[1, 2]", "--unet.attn_resolutions=[4]",
         "--mlp.in_dim=4", "--mlp.out_dim=2"]
    )
    instantiate = getattr(parser, "instantiate", None) or parser.instantiate_classes
    init = instantiate(cfg)
    assert tuple(init.unet.channel_mult) == (1, 2)
    assert init.mlp.out_dim == 2
