"""Training AlexNet classifiers and exporting inference-ready checkpoints."""
