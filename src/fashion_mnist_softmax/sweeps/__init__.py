"""What a multirun adds: the sweep's summary and the Optuna sampler."""
