"""worldmodels_cli: World Models (Ha & Schmidhuber 2018) as a staged command-line pipeline."""

__version__ = "0.1.0"
