"""How to train: the Trainer, its checkpoints, optimizers, schedulers, hooks and logging."""
