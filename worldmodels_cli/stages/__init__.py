"""The commands' work, one module per stage, each with one `run()`."""
