"""Contracts shared by the trainer and the labeling pipeline: checkpoints, images, tables."""
