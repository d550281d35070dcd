"""Training pipeline: one generic stage per step, one small module per catalog entry."""
