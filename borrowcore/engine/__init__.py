"""Training: the trainer and its steps, the experiment config, the training log, the ablation study."""
