"""Training: the loop and its pmapped step (loop), losses, checkpoints, the metrics writer,
the config check run before anything starts, and distillation of teacher labels."""
