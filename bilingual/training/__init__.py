"""Training: train state, per-task steps, sharded compilation, checkpoints, logging, the trainer loop."""
