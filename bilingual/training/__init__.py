"""Training: the one trainer loop, the objectives of the stages, hooks (metrics, evaluation, checkpoints),
per-task steps, sharded compilation, multi-host start-up, and the fine-tuning stage on top of the trainer."""
