"""V's encoder laid out for the agent's few frames a step: the same function as `ConvVAE.encode`, other kernels.

At the agent's 1-8 rows oneDNN's convolutions cost far more than their FLOPs where the maps are small (the last
conv, 6x6 -> 2x2, runs at ≈ 20 GFLOP/s: mostly fixed cost per call), and re-laid V's weights on every call.
Here the convs with a large output (31x31, 14x14) run in oneDNN on channels-last weights laid out once; each
conv with a small output is ONE matmul over its input's patches (NHWC im2col: a patch row is kh runs of kw·C
contiguous values); the two heads are one matmul on the NHWC flatten (their columns permuted to match).
Measured on a 2-core Zen 4 at 4 rows (Doom's small V): 0.83 ms a batch -> 0.45; 8 rows of CarRacing's: 3.7 -> 2.5.

Rows are independent: the heads' matmul runs on at least `MIN_ROWS` rows, as one of fewer takes another kernel
path whose results differ in the last bit; the convs' matmuls have at least 4 rows per frame. So a frame's
(μ, log σ²) is the same whichever frames share its batch (tests/test_episodes.py checks it on the running
machine, at one torch thread, the workers' setting).
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..models.vae import ENC_KERNEL, IMAGE_SIZE, STRIDE, ConvVAE, to_input

MIN_ROWS = 4  # fewer rows in a matmul take the matrix-vector kernel, which rounds differently
ONEDNN_MIN_OUT = 14  # convs with an output at least this wide run in oneDNN, smaller ones as one matmul


class FrameEncoder:
    """V's (μ, log σ²) of uint8 frames, for inference on the CPU (float32, no gradients)."""

    def __init__(self, vae: ConvVAE) -> None:
        self.z_dim = vae.config.z_dim
        self.convs: list = []  # per conv: an nn.Conv2d (oneDNN) or (W (kh·kw·C, O), bias (O,)) for im2col
        size = IMAGE_SIZE
        with torch.no_grad():
            for conv in vae.encoder:
                size = (size - ENC_KERNEL) // STRIDE + 1
                if size >= ONEDNN_MIN_OUT:
                    self.convs.append(copy.deepcopy(conv).eval().to(memory_format=torch.channels_last))
                else:  # rows (ky, kx, c): a patch in NHWC order
                    w = conv.weight.detach().permute(2, 3, 1, 0).reshape(-1, conv.out_channels)
                    self.convs.append((w.contiguous(), conv.bias.detach().clone()))
            c = vae.config.enc_channels[-1]
            w = torch.cat([vae.fc_mu.weight, vae.fc_logvar.weight]).detach()  # (2Z, C·H·W): torch's NCHW flatten
            w = w.view(-1, c, size, size).permute(0, 2, 3, 1).reshape(w.shape[0], -1)  # (2Z, H·W·C)
            self.head_w = w.T.contiguous()  # (H·W·C, 2Z)
            self.head_b = torch.cat([vae.fc_mu.bias, vae.fc_logvar.bias]).detach().clone()

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> tuple[Tensor, Tensor]:
        """frames (R, 64, 64, 3) uint8 -> μ, log σ² each (R, Z) float32."""
        frames = np.ascontiguousarray(frames)
        if not frames.flags.writeable:  # env frames may be read-only; torch wants to own writable memory
            frames = frames.copy()
        x = to_input(torch.from_numpy(frames))  # (R, 3, 64, 64), channels-last in memory
        for conv in self.convs:
            if isinstance(conv, torch.nn.Module):
                x = F.relu_(conv(x))  # (R, O, H', W') channels-last
            else:
                x = _patch_matmul(x.permute(0, 2, 3, 1), *conv).permute(0, 3, 1, 2)
        r = x.shape[0]
        flat = x.permute(0, 2, 3, 1).reshape(r, -1)  # (R, H·W·C)
        if r < MIN_ROWS:
            flat = torch.cat([flat, flat.new_zeros(MIN_ROWS - r, flat.shape[1])])
        y = torch.addmm(self.head_b, flat, self.head_w)[:r]  # (R, 2Z)
        return y[:, : self.z_dim], y[:, self.z_dim :]


def _patch_matmul(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """A valid ENC_KERNEL x ENC_KERNEL stride-STRIDE conv + ReLU of x (R, H, W, C) as one matmul -> (R, H', W', O)."""
    x = x.contiguous()  # NHWC (a no-op after a channels-last conv or matmul)
    r, h, _, c = x.shape
    k, s = ENC_KERNEL, STRIDE
    out = (h - k) // s + 1
    sr, sh, sw, _ = x.stride()
    # (R, H', W', ky, kx·C): kx and C merge into one run because x is NHWC (sw == C)
    patches = x.as_strided((r, out, out, k, k * c), (sr, s * sh, s * sw, sh, 1)).reshape(r * out * out, k * k * c)
    return torch.addmm(b, patches, w).relu_().view(r, out, out, -1)
