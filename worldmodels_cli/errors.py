"""One error family for everything a user can cause; the CLI turns it into a one-line message."""


class WorldModelsError(Exception):
    """Base class: bad input, bad artifact, interrupted run. Message is shown to the user as is."""


class ArtifactError(WorldModelsError):
    """An artifact is missing, corrupt, of the wrong kind, or from a newer schema."""


class ConfigError(WorldModelsError):
    """A configuration value or command-line option is invalid."""


class TrainingDiverged(WorldModelsError):
    """A loss became NaN/inf; the last good checkpoint was kept."""


class WorkerError(WorldModelsError):
    """A worker process or environment failed; names the task, seed and cause."""


class Interrupted(WorldModelsError):
    """Ctrl-C: the state on disk is resumable by rerunning the same command."""
