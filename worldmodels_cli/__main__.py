"""`python -m worldmodels_cli` == `wm`."""

from .cli import main

main()
