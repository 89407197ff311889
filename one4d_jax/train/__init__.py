"""Training: frozen vs trainable trees, the rectified-flow step, optimiser."""
