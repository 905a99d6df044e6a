"""Training: the rectified-flow objective, TREAD, REPA, FSDP2, checkpoints and the curriculum."""
