"""The networks: V (`vae.ConvVAE`), M and C. Each is an `nn.Module` built from one config dataclass only."""
