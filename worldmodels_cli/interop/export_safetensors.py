"""`wm export safetensors`: the weights of V, M and C in one safetensors file, for tools without this package.

Tensors (float32), by prefix:

- `vae.*`: V's state dict as `ConvVAE` names it (`vae.encoder.{0..3}.weight`, `vae.fc_mu.bias`, ...);
- `mdn.*`: M's (`mdn.weight_ih` (4H, In), `mdn.weight_hh` (4H, H), `mdn.bias` (4H,) the one LSTM bias, gate order
  i, f, g, o; `mdn.head.weight`, `mdn.head.bias`); an RSSM's state dict as `models/rssm.py` names it, its
  `mdn.config` with `"dynamics": "rssm"`;
- `controller.layers.{i}.weight` (out, in) and `.bias` (out,) (when C has biases): C's layers in torch's linear
  layout, unflattened from the CMA vector (`--which best` or `mean`).

Metadata (strings): `format`; `env`; `vae.config`, `mdn.config`, `controller.config` (JSON: the configs the
models are built from; C's with `features` in input order, `hidden_units` of its optional tanh layer, `env`,
`z_dim`, `mdn_hidden`, `action_dim`, `params`); `sources` (JSON: path and SHA-256 of each artifact). Shapes are
in the safetensors header. docs/interop.md has a plain-torch loader.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..runtime.errors import ArtifactError, ConfigError
from ..store import artifacts as A
from ..store import files
from .optional import require

FORMAT = "worldmodels_cli/1"


@dataclass(frozen=True)
class SafetensorsResult:
    path: Path
    models: tuple[str, ...]
    parameters: int

    def line(self) -> str:
        return f"{self.path}: {', '.join(self.models)} ({self.parameters:,} parameters)"


def run(
    out: str | os.PathLike,
    *,
    vae: str | os.PathLike | None = None,
    mdn: str | os.PathLike | None = None,
    controller: str | os.PathLike | None = None,
    which: str = "best",
) -> SafetensorsResult:
    """Write the weights of the given vae, mdn and controller artifacts (at least one) to `out`."""
    save_file = require("safetensors.torch").save_file
    from ..models.controller import load_controller
    from ..models.mdnrnn import load_mdn
    from ..models.vae import load_vae

    if vae is None and mdn is None and controller is None:
        raise ConfigError("give at least one of --vae, --mdn, --controller")
    tensors: dict[str, torch.Tensor] = {}
    configs: dict[str, dict] = {}
    envs: dict[str, str] = {}
    sources = {
        role: p for role, p in (("vae", vae), ("mdn", mdn), ("controller", controller)) if p is not None
    }
    for role, path in sources.items():
        if role == "controller":
            model, _, meta = load_controller(path, which)
            mc = meta.model_config
            for i, (w, b) in enumerate(model.unflatten(model.params)):
                tensors[f"controller.layers.{i}.weight"] = (
                    w.T
                )  # (in, out) in the CMA layout -> torch's (out, in)
                if b is not None:
                    tensors[f"controller.layers.{i}.bias"] = b
            c = mc["controller"]
            configs[role] = {
                "features": c["features"],
                "hidden_units": c["hidden"],
                "bias": c["bias"],
                "env": mc["env"],
                "z_dim": mc["z_dim"],
                "mdn_hidden": mc["hidden"],
                "action_dim": mc["action_dim"],
                "params": which,
                **({"mdn_cell": mc["cell"]} if "cell" in mc else {}),  # an RSSM's M: the stoch width of C's "c"
            }
        else:
            model, meta = (load_vae if role == "vae" else load_mdn)(path, "cpu")
            tensors.update({f"{role}.{k}": v for k, v in model.state_dict().items()})
            configs[role] = meta.model_config
        envs[role] = meta.env
    env = _check_matching(configs, envs)
    metadata = {
        "format": FORMAT,
        "env": env,
        "sources": json.dumps(A.inputs_record(sources)),
        **{f"{role}.config": json.dumps(cfg, sort_keys=True) for role, cfg in configs.items()},
    }
    # own, contiguous storage each: safetensors refuses tensors that share memory (C's layers are views of one vector)
    tensors = {
        k: v.detach().to("cpu", torch.float32).clone(memory_format=torch.contiguous_format)
        for k, v in tensors.items()
    }
    files.write_atomic(out, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return SafetensorsResult(Path(out), tuple(sources), sum(t.numel() for t in tensors.values()))


def _check_matching(configs: dict[str, dict], envs: dict[str, str]) -> str:
    """The one env of the models; V, M and C must fit together (same env, z and H), as the agent needs them."""
    named = {role: env for role, env in envs.items() if env}
    if len(set(named.values())) > 1:
        raise ConfigError("models of different envs: " + ", ".join(f"{r} is {e}" for r, e in named.items()))
    z = {role: int(cfg["z_dim"]) for role, cfg in configs.items()}
    if len(set(z.values())) > 1:
        raise ArtifactError(
            "models of different latent sizes: " + ", ".join(f"{r} z={v}" for r, v in z.items())
        )
    m_hidden = configs["mdn"].get("hidden", configs["mdn"].get("deter")) if "mdn" in configs else None  # RSSM: deter
    if "mdn" in configs and "controller" in configs and m_hidden != configs["controller"]["mdn_hidden"]:
        raise ArtifactError(
            f"the controller expects M's H={configs['controller']['mdn_hidden']}, M has H={m_hidden}"
        )
    return next(iter(named.values()), "")
