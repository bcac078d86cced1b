"""Fused sweeps (hydra/launcher=fused): a sweep's jobs trained together as one population. Opt-in."""
