"""Training: the generic trainer, losses, data samplers and the per-network training entry points."""
