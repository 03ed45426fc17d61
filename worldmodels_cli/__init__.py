"""worldmodels_cli: World Models (Ha & Schmidhuber 2018) as a staged command-line pipeline."""

import os as _os

# Before torch loads OpenMP: idle threads sleep instead of spinning. With the default, a 2-thread LSTM step on a
# 2-core machine where anything else runs measured 16 s instead of 0.63 s (25x); override by setting the variable.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
