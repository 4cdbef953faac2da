"""Training: the one-time backbone embedding pass and the anchored contrastive alignment."""
