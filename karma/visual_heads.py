r"""Train-only conditional generative heads over a frozen visual feature (paper §2.4.3, §3.4).

KARMA's visual decodability term reconstructs the target item's frozen visual feature ``x0``
(F dims, L2-normalised; see :mod:`karma.visual`) with a conditional diffusion / flow-matching head,
conditioned on ``c``: the history states (Task-1 reading; pool them to one vector, e.g.
:func:`masked_mean`) or the next-interest / retrieval embedding (Task-2 reading: ``h`` or ``u``).

Eq. (8), as this module reads it (the paper's text leaves the formula out and says the loss
"follows standard formulations"); with ``m_b`` = 1 if impression b's target item has an image::

    L_vis = sum_b m_b * ell_b / max(1, sum_b m_b),     ell_b = (1/F) || f_theta(x_t, t, c_b) - y ||^2

- rectified flow / flow matching (Liu et al. 2022; Lipman et al. 2022):
  t ~ U[0, 1], eps ~ N(0, I), x_t = (1 - t) * s*x0 + t * eps, target y = eps - s*x0 (the velocity);
  sampling integrates dx/dt = f_theta from t = 1 (noise) to t = 0 with Euler steps.
- diffusion, DDPM epsilon prediction (Ho et al. 2020):
  t ~ U{0..T-1}, x_t = sqrt(abar_t) * s*x0 + sqrt(1 - abar_t) * eps (diffusers' DDPMScheduler.add_noise),
  target y = eps; sampling runs diffusers' DDIMScheduler (eta = 0) for ``steps`` steps.

``s`` is the data scale (default ``sqrt(F)``): an L2-normalised F-dim vector has per-coordinate
scale ~ 1/sqrt(F), so with unit-variance noise nearly every noise level would drown it (the
standard "unit-variance data" convention of DDPM / EDM / latent diffusion). Samples are returned
divided by ``s`` (back in feature units, not re-normalised).

Rows without an image are excluded (mask False): they do not enter the mean, and with no row the
loss is an exact 0 still attached to the head's parameters (so optimisers / DDP see a gradient).

Design (DiT style): the *objective* (noise schedule, interpolation, target, loss, sampler) is a
plain object (:class:`RectifiedFlow`, :class:`DDPMObjective`) that takes the *network*
(:class:`Denoiser`, any ``(x_t, t, c) -> (B, F)`` module) as an argument. The heads
(:class:`FlowMatchingHead`, :class:`DiffusionHead`) just pair one of each. The network always
receives ``t`` in [0, 1] (DDPM timesteps are divided by T), so one denoiser serves both objectives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DDPMObjective",
    "Denoiser",
    "DiffusionHead",
    "FlowMatchingHead",
    "RectifiedFlow",
    "blind_linear_mse",
    "masked_mean",
    "masked_mse",
    "timestep_embedding",
]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, scale: float = 1000.0) -> torch.Tensor:
    """Sinusoidal embedding (Vaswani et al.; as in DDPM / DiT) of ``t`` in [0, 1] (scaled by
    ``scale`` so the frequencies resolve 1/1000 steps): ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = (t.float() * scale)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states (B, T, D)`` over the positions where ``mask (B, T)`` is True -> ``(B, D)``:
    one way to turn history states into the head's condition vector (Task-1 reading)."""
    m = mask.to(states.dtype).unsqueeze(-1)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Per-row mean squared error, averaged over the rows where ``mask`` is True."""
    row = (pred - target).pow(2).mean(dim=-1)
    if mask is None:
        return row.mean()
    m = mask.to(row.dtype)
    return (row * m).sum() / m.sum().clamp(min=1.0)


class _ResBlock(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.norm = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, hidden * 2)
        self.fc2 = nn.Linear(hidden * 2, hidden)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = h + emb  # additive (time + condition) injection before every block
        return h + self.fc2(F.silu(self.fc1(self.norm(h))))


class Denoiser(nn.Module):
    """Small residual MLP ``(x_t (B, F), t (B,) in [0, 1], c (B, C)) -> (B, F)``.

    Conditioning by concatenation: the input layer reads ``[x_t, time_mlp(sinusoid(t)), cond_mlp(c)]``.
    Why not FiLM / adaLN: the state here is a single vector, not a token sequence, so the input
    projection already mixes x_t, t and c in every hidden unit; FiLM/adaLN matters when a deep
    transformer must re-inject the condition into each block. To keep the condition from fading with
    depth, the summed (time + condition) embedding is also added to the residual stream before every
    block (cheap additive conditioning, as in the DDPM U-Net's time embedding). The output layer is
    zero-initialised, so the untrained head predicts 0 (DiT's zero-init of the final layer).
    """

    def __init__(self, feature_dim: int, cond_dim: int, hidden: int = 256, depth: int = 3, time_dim: int = 128):
        super().__init__()
        self.feature_dim, self.cond_dim, self.time_dim = feature_dim, cond_dim, time_dim
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.cond_mlp = nn.Sequential(nn.Linear(cond_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.inp = nn.Linear(feature_dim + 2 * hidden, hidden)
        self.blocks = nn.ModuleList(_ResBlock(hidden) for _ in range(depth))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, feature_dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        te = self.time_mlp(timestep_embedding(t.reshape(-1).expand(x_t.shape[0]), self.time_dim).to(x_t.dtype))
        ce = self.cond_mlp(c)
        h = self.inp(torch.cat([x_t, te, ce], dim=-1))
        emb = te + ce
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


def _zero_loss(net: nn.Module, c: torch.Tensor) -> torch.Tensor:
    """An exact 0 attached to the graph of the network's parameters and of ``c``."""
    z = c.sum() * 0.0
    for p in net.parameters():
        if p.requires_grad:
            z = z + p.sum() * 0.0
    return z


def _pick(value: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor | None:
    """Rows of ``value`` where ``mask`` is True (``value`` / ``mask`` None pass through)."""
    if value is None or mask is None:
        return value
    return value[mask.to(device=value.device, dtype=torch.bool)]


def _randn(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    # draw on the generator's device, then move (a CPU generator works for any model device)
    dev = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=dev, dtype=torch.float32).to(like.device, like.dtype)


def _rand(n: int, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    dev = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=dev).to(like.device, like.dtype)


def blind_linear_mse(x0_coef, noise_coef, target_x0, target_noise) -> torch.Tensor | float:
    """Per-coordinate MSE of the best affine predictor of ``target_x0 * x0 + target_noise * noise`` from
    ``x_t = x0_coef * x0 + noise_coef * noise`` alone (not the condition), for unit-variance isotropic x0
    and noise. For data whose per-coordinate second moment averages 1 (the heads' scaled x0) it is an
    upper bound: the MSE grows and is concave in each eigenvalue of the data's covariance, so any
    anisotropy or non-zero mean only lowers it. A head whose loss stays above it has not yet done better
    than ignoring its condition."""
    cov = target_x0 * x0_coef + target_noise * noise_coef
    return target_x0 ** 2 + target_noise ** 2 - cov ** 2 / (x0_coef ** 2 + noise_coef ** 2)


class RectifiedFlow:
    """Rectified-flow objective: x_t = (1 - t) x0 + t * noise, network predicts v = noise - x0.

    ``t`` is drawn U[0, 1] (the SD3 logit-normal alternative is not used: the paper gives none).
    Operates on whatever ``x0`` it is given (the head applies the data scale).
    """

    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, *([1] * (x0.dim() - 1)))
        return (1.0 - t) * x0 + t * noise

    @staticmethod
    def target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - x0

    def loss(self, net: nn.Module, x0: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
             t: torch.Tensor | None = None) -> torch.Tensor:
        x0, c_sel, noise, t = (_pick(v, mask) for v in (x0, c, noise, t))
        if x0.shape[0] == 0:
            return _zero_loss(net, c)
        noise = _randn(x0.shape, x0, generator) if noise is None else noise
        t = _rand(x0.shape[0], x0, generator) if t is None else t
        pred = net(self.interpolate(x0, noise, t), t, c_sel)
        return masked_mse(pred, self.target(x0, noise), None)

    @staticmethod
    def blind_loss_bound(points: int = 100_000) -> float:
        """The loss (t ~ U[0, 1]) of the best affine velocity predictor that ignores the condition
        (:func:`blind_linear_mse`; pi / 2 for this interpolation), by the midpoint rule."""
        t = (torch.arange(points, dtype=torch.float64) + 0.5) / points
        return float(blind_linear_mse(1.0 - t, t, -1.0, 1.0).mean())

    @torch.no_grad()
    def sample(self, net: nn.Module, c: torch.Tensor, feature_dim: int, steps: int = 50,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Euler integration of dx/dt = v from t = 1 (pure noise) to t = 0."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        x = _randn((c.shape[0], feature_dim), c, generator)
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((c.shape[0],), 1.0 - i * dt, device=c.device, dtype=x.dtype)
            x = x - dt * net(x, t, c)
        return x


class DDPMObjective:
    """DDPM epsilon-prediction objective on diffusers' schedulers.

    Training noises with ``DDPMScheduler.add_noise`` (linear betas 1e-4..0.02 over
    ``num_train_timesteps``, the DDPM default); sampling uses a fresh ``DDIMScheduler`` built from the
    same config (eta = 0, deterministic given the initial noise; no clipping of x0, since the
    scaled features are not confined to [-1, 1]). The network sees ``t = timestep / T``.
    """

    PREDICTIONS = ("epsilon", "sample", "v_prediction")  # the network's target: noise, x0, or velocity

    def __init__(self, num_train_timesteps: int = 1000, beta_schedule: str = "linear", prediction: str = "epsilon"):
        from diffusers import DDPMScheduler

        if prediction not in self.PREDICTIONS:
            raise ValueError(f"unknown diffusion prediction {prediction!r}; valid: {', '.join(self.PREDICTIONS)}")
        self.num_train_timesteps = num_train_timesteps
        self.scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule,
                                       prediction_type=prediction, clip_sample=False)

    def _target(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        kind = self.scheduler.config.prediction_type
        if kind == "epsilon":
            return noise
        return x0 if kind == "sample" else self.scheduler.get_velocity(x0, noise, timesteps)

    def blind_loss_bound(self) -> float:
        """The loss (timesteps uniform, as in training) of the best affine predictor of the network's
        target that ignores the condition (:func:`blind_linear_mse`): mean abar_t for noise prediction
        (0.276 for the default schedule), mean (1 - abar_t) for x0, 1 for velocity."""
        abar = self.scheduler.alphas_cumprod.to(torch.float64)
        signal, noise = abar.sqrt(), (1.0 - abar).sqrt()
        target = {"epsilon": (0.0, 1.0), "sample": (1.0, 0.0), "v_prediction": (-noise, signal)}
        return float(blind_linear_mse(signal, noise, *target[self.scheduler.config.prediction_type]).mean())

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.scheduler.add_noise(x0, noise, timesteps.to(x0.device))

    def loss(self, net: nn.Module, x0: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
             timesteps: torch.Tensor | None = None) -> torch.Tensor:
        x0, c_sel, noise, timesteps = (_pick(v, mask) for v in (x0, c, noise, timesteps))
        if x0.shape[0] == 0:
            return _zero_loss(net, c)
        noise = _randn(x0.shape, x0, generator) if noise is None else noise
        if timesteps is None:
            dev = generator.device if generator is not None else x0.device
            timesteps = torch.randint(0, self.num_train_timesteps, (x0.shape[0],), generator=generator, device=dev)
        timesteps = timesteps.to(x0.device).long()
        x_t = self.add_noise(x0, noise, timesteps)
        pred = net(x_t, timesteps.to(x0.dtype) / self.num_train_timesteps, c_sel)
        return masked_mse(pred, self._target(x0, noise, timesteps), None)

    @torch.no_grad()
    def sample(self, net: nn.Module, c: torch.Tensor, feature_dim: int, steps: int = 50,
               generator: torch.Generator | None = None) -> torch.Tensor:
        from diffusers import DDIMScheduler

        sched = DDIMScheduler.from_config(self.scheduler.config, clip_sample=False, set_alpha_to_one=True)
        sched.set_timesteps(steps, device=c.device)
        x = _randn((c.shape[0], feature_dim), c, generator)
        for ts in sched.timesteps:
            t = torch.full((c.shape[0],), float(ts) / self.num_train_timesteps, device=c.device, dtype=x.dtype)
            x = sched.step(net(x, t, c), ts, x, eta=0.0).prev_sample  # the step reads prediction_type
        return x


class _Head(nn.Module):
    """A denoiser network paired with an objective; ``x0`` enters scaled by ``data_scale``."""

    def __init__(self, feature_dim: int, cond_dim: int, hidden: int, objective, data_scale: float | None,
                 net: nn.Module | None = None):
        super().__init__()
        self.feature_dim, self.cond_dim = feature_dim, cond_dim
        self.data_scale = math.sqrt(feature_dim) if data_scale is None else float(data_scale)
        self.net = net if net is not None else Denoiser(feature_dim, cond_dim, hidden)
        self.objective = objective

    def loss(self, x0: torch.Tensor, c: torch.Tensor, mask: torch.Tensor | None = None,
             generator: torch.Generator | None = None, **fixed) -> torch.Tensor:
        """Eq. (8) over the rows where ``mask`` is True (``x0 (B, F)``, ``c (B, C)``, ``mask (B,)``).
        ``fixed`` (tests): ``noise`` and ``t`` / ``timesteps`` instead of drawing them."""
        if x0.shape[-1] != self.feature_dim or c.shape[-1] != self.cond_dim:
            raise ValueError(f"expected x0 (B, {self.feature_dim}) and c (B, {self.cond_dim}), "
                             f"got {tuple(x0.shape)} and {tuple(c.shape)}")
        return self.objective.loss(self.net, x0 * self.data_scale, c, mask, generator, **fixed)

    def sample(self, c: torch.Tensor, steps: int = 50, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw one feature per condition row: ``c (B, C) -> (B, F)`` (in x0 units)."""
        was_training = self.training
        self.eval()
        try:
            x = self.objective.sample(self.net, c, self.feature_dim, steps, generator)
        finally:
            self.train(was_training)
        return x / self.data_scale


class FlowMatchingHead(_Head):
    """Rectified-flow head: ``loss(x0, c, mask, generator)``, ``sample(c, steps, generator)`` (Euler)."""

    def __init__(self, feature_dim: int, cond_dim: int, hidden: int = 256, data_scale: float | None = None,
                 net: nn.Module | None = None):
        super().__init__(feature_dim, cond_dim, hidden, RectifiedFlow(), data_scale, net)


class DiffusionHead(_Head):
    """DDPM (epsilon) head: training noise via DDPMScheduler.add_noise, sampling via DDIMScheduler."""

    def __init__(self, feature_dim: int, cond_dim: int, hidden: int = 256, num_train_timesteps: int = 1000,
                 data_scale: float | None = None, net: nn.Module | None = None, prediction: str = "epsilon"):
        super().__init__(feature_dim, cond_dim, hidden, DDPMObjective(num_train_timesteps, prediction=prediction),
                         data_scale, net)
