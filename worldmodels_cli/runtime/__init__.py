"""What runs the work: errors, seeds, devices, and the executor (local processes or Ray)."""
