"""The training and scoring machinery: the Trainer, its epochs and checkpoints, predict, metrics."""
