"""V: the convolutional VAE of ref §3, and its loss.

Shapes: B batch, Z latent. Images enter as float in [0, 1], NCHW (B, 3, 64, 64). Frames are stored as uint8 NHWC
(B, 64, 64, 3) (ref §1); `to_input` converts: permute to NCHW, then /255 (ref §1.1: `obs.astype(float)/255.0`).

Layers (TF `tf.layers`, padding 'valid', stride 2 everywhere, ReLU unless noted; ref §3):

    encoder  4x4 convs 3->32->64->128->256: 64 -> 31 -> 14 -> 6 -> 2, flatten 2*2*256 = 1024
    heads    dense 1024->Z (mu), dense 1024->Z (logvar), linear
    decoder  dense Z->1024, reshape 1x1x1024; deconvs 5,5,6,6: 1 -> 5 -> 13 -> 30 -> 64; last one sigmoid

4,348,547 parameters at Z=32 (CarRacing) and 4,446,915 at Z=64 (Doom) with the default channels (ref §3).
The flatten and the decoder's reshape use torch's NCHW order, which differs from TF's NHWC order: this changes
nothing in the function class, only how the original's weight files would map (not supported).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import VAEConfig

ENC_KERNEL = 4
DEC_KERNELS = (5, 5, 6, 6)  # ref §3: these sizes take 1x1 back to exactly 64x64 with stride 2, no padding
STRIDE = 2
IMAGE_SIZE = 64
ENC_OUT = 2  # spatial size after four valid 4x4 stride-2 convs of a 64x64 image


class ConvVAE(nn.Module):
    """The World Models V; depends on nothing but its VAEConfig."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        enc = (3, *config.enc_channels)
        self.encoder = nn.ModuleList(
            nn.Conv2d(enc[i], enc[i + 1], ENC_KERNEL, stride=STRIDE) for i in range(len(enc) - 1)
        )
        self.flat = config.enc_channels[-1] * ENC_OUT * ENC_OUT  # 1024 with the paper's channels
        self.fc_mu = nn.Linear(self.flat, config.z_dim)
        self.fc_logvar = nn.Linear(self.flat, config.z_dim)
        # ref §3: dense Z -> 1024 reshaped to 1x1x1024, i.e. as wide as the encoder's flattened output
        self.fc_dec = nn.Linear(config.z_dim, self.flat)
        dec = (self.flat, *config.dec_channels, 3)
        self.decoder = nn.ModuleList(
            nn.ConvTranspose2d(dec[i], dec[i + 1], k, stride=STRIDE) for i, k in enumerate(DEC_KERNELS)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """TF defaults (ref §3): glorot-uniform kernels, zero biases."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, 3, 64, 64) float in [0, 1] -> mu, logvar, each (B, Z)."""
        h = x
        for conv in self.encoder:
            h = F.relu(conv(h))
        h = h.flatten(1)  # (B, 1024)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z: Tensor) -> Tensor:
        """z (B, Z) -> reconstruction (B, 3, 64, 64) in (0, 1)."""
        h = self.fc_dec(z).view(-1, self.flat, 1, 1)  # (B, 1024, 1, 1)
        last = len(self.decoder) - 1
        for i, deconv in enumerate(self.decoder):
            h = deconv(h)
            h = torch.sigmoid(h) if i == last else F.relu(h)
        return h

    def forward(self, x: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x (B, 3, 64, 64) in [0, 1] -> (reconstruction (B, 3, 64, 64), mu (B, Z), logvar (B, Z)).

        z = mu + exp(logvar / 2) * eps with eps (B, Z) ~ N(0, I); pass `eps` to control the noise (training draws it
        from a seeded generator so that a resumed run is exact)."""
        mu, logvar = self.encode(x)
        if eps is None:
            eps = torch.randn_like(mu)
        return self.decode(reparameterize(mu, logvar, eps)), mu, logvar


def reparameterize(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """z = mu + sigma * eps, sigma = exp(logvar / 2) (ref §3)."""
    return mu + torch.exp(0.5 * logvar) * eps


def to_input(frames: Tensor) -> Tensor:
    """uint8 frames (B, 64, 64, 3) NHWC -> float (B, 3, 64, 64) in [0, 1] (ref §1.1: /255).

    The permute is a view: the result is NCHW in shape and channels-last in memory, which cuDNN prefers."""
    return frames.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, 64, 64)


def kl_divergence(mu: Tensor, logvar: Tensor) -> Tensor:
    """Per-sample KL(N(mu, exp logvar) || N(0, I)) = -0.5 * sum_Z (1 + logvar - mu^2 - exp logvar); (B, Z) -> (B,)."""
    return -0.5 * torch.sum(1.0 + logvar - mu.pow(2) - logvar.exp(), dim=1)


def vae_loss(x: Tensor, recon: Tensor, mu: Tensor, logvar: Tensor, kl_tolerance: float,
             detail_weight: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """The loss of ref §3, returned as (loss, recon_loss, kl), each a scalar batch mean:

        recon_loss = mean_B  sum_{C,H,W} (x - recon)^2            (summed squared error, not mean, not BCE)
        kl         = mean_B  max(KL_b, kl_tolerance * Z)           (the floor is per sample, on the total KL)
        loss       = recon_loss + kl

    x, recon (B, 3, 64, 64); mu, logvar (B, Z). With kl_tolerance 0.5 the floor is 16 nats at Z=32, 32 at Z=64.
    `detail_weight` > 0 (not the paper's): the loss sums the squared error weighted by `detail_weights`, so a small
    object that stands out from its surroundings (a distant fireball) costs more than its few pixels; recon_loss
    stays the unweighted sum, comparable between Vs, and loss = weighted recon + kl."""
    err = (x - recon).pow(2)
    r = err.flatten(1).sum(dim=1).mean()
    floor = kl_tolerance * mu.shape[1]
    kl = torch.clamp(kl_divergence(mu, logvar), min=floor).mean()  # ref §3: kl = max(kl, kl_tolerance * N_z)
    if detail_weight <= 0:
        return r + kl, r, kl
    rw = (err * detail_weights(x, detail_weight)).flatten(1).sum(dim=1).mean()
    return rw + kl, r, kl


DETAIL_WINDOW = 5  # px: wider than a distant fireball (< 2 px at 64x64), narrower than the walls


@torch.no_grad()
def detail_weights(x: Tensor, weight: float) -> Tensor:
    """Per-pixel loss weights (B, 1, H, W) of frames x (B, 3, H, W) in [0, 1]: 1 + weight * c, c the pixel's
    contrast with its neighbourhood (channel mean of |x - its DETAIL_WINDOW² box mean|), scaled to a mean of 1 per
    frame, so the summed error keeps its scale against the KL term and only its spread over the frame changes."""
    local = F.avg_pool2d(x, DETAIL_WINDOW, stride=1, padding=DETAIL_WINDOW // 2, count_include_pad=False)
    w = 1.0 + weight * (x - local).abs().mean(dim=1, keepdim=True)
    return w / w.mean(dim=(2, 3), keepdim=True)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def load_vae(path, device: str = "cpu", *, allow_incomplete: bool = False):
    """Rebuild V from a `vae` artifact (its model_config attribute) and load its weights -> (model in eval mode,
    artifacts.Meta). Raises ArtifactError for another kind, a damaged file, or (unless allow_incomplete) an
    unfinished training checkpoint."""
    from ..store import checkpoint

    return checkpoint.load_model(path, "vae", lambda cfg: ConvVAE(VAEConfig.from_dict(cfg)), device,
                                 allow_incomplete=allow_incomplete)
