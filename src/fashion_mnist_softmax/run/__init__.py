"""One run: train, evaluate or predict, its callbacks, checkpoints, figures and run directory."""
