"""Training: the loop, the losses, the recipe, per-epoch validation, the gates, progress of a training run."""
