"""Using a trained checkpoint: evaluation with TTA, prediction on photos, filters and
feature maps."""
