"""The training run: the fit/select/test job, the LightningModule, losses, checkpoints,
stopping and resuming, the end-of-fit artifacts."""
