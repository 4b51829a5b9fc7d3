"""The training layer: objectives, engines, callbacks, checkpoints and resume
(`finetune.train.runner.train` runs a config end to end)."""
