"""What is kept: the artifact schema, atomic files, checkpoints, frames, series and metrics."""
