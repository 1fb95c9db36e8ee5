"""Training on the Lightning Trainer: the module, callbacks, optimizers, run folders, the validation
problem, and `fit`."""
