"""Training on the Lightning Trainer: the module, callbacks, run folders, `fit` and `compare`."""
