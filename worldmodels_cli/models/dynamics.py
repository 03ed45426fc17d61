"""M's two dynamics behind one artifact kind (`mdn`): the paper's MDN-RNN and an RSSM (beyond.md §2).

An mdn artifact's `model_config` says which: an RSSM's carries `"dynamics": "rssm"`, an MDN-RNN's (every artifact
from before the RSSM) nothing. The stages that take M (evolve, dream, info, iterate, evaluate's agent) load it
with `mdnrnn.load_mdn`, which builds either; what C sees of M's memory is its "h" and "c" parts:

- MDN-RNN: h = the LSTM's output, c = its cell, both H wide (ref §5);
- RSSM: h = deter (D wide), c = stoch (S·K wide), so C's `zch` is [z, stoch, deter], all of M's state, and `zh`
  [z, deter], its recurrent part.
"""

from __future__ import annotations

from torch import nn

from ..config import MDNConfig, RSSMConfig
from .mdnrnn import MDNRNN
from .rssm import DYNAMICS as RSSM_DYNAMICS
from .rssm import RSSM

Dynamics = MDNRNN | RSSM


def build(model_config: dict) -> nn.Module:
    """M from an mdn artifact's model_config (module doc); ConfigError on unknown keys."""
    mc = dict(model_config)
    if mc.pop("dynamics", "mdnrnn") == RSSM_DYNAMICS:
        return RSSM(RSSMConfig.from_dict(mc))
    return MDNRNN(MDNConfig.from_dict(mc))


def name(m: nn.Module) -> str:
    """"rssm" or "mdnrnn"."""
    return RSSM_DYNAMICS if isinstance(m, RSSM) else "mdnrnn"


def memory_widths(m: nn.Module) -> tuple[int, int]:
    """(width of C's "h", width of C's "c") for M `m` (module doc)."""
    if isinstance(m, RSSM):
        return m.cfg.deter, m.stoch_dim
    return m.cfg.hidden, m.cfg.hidden
