"""The layout of a training run's directory (the trainer's --workdir), for the trainer that writes it and
the commands that read it (a run directory given as a policy means its student)."""
CONFIG = "config.json"                # the config the checkpoints were trained with, compared on resume
CHECKPOINTS = "checkpoints"           # orbax steps of the full TrainState
BAD_CHECKPOINTS = "checkpoints_bad"   # steps that failed to restore, moved aside
TENSORBOARD = "tensorboard"
STUDENT = "student"                   # the student's policy directory, written at the end of the run
