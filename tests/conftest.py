"""Shared fixtures: a small generated sample set and a checkpoint really trained on it."""
import os

import pytest

from alexlabel.sample_data import write_sample_data
from trainer.train import TrainConfig, train

# Tests need a real checkpoint, not a good one: tiny widths and one epoch keep it to seconds.
TINY_TRAINING = dict(arch="alexnet_small", arch_kwargs={"width": 8, "dropout": 0.0}, image_size=32, epochs=1,
                     batch_size=16, optimizer="adamw", lr=1e-3, workers=0)


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("sample"))
    write_sample_data(root, seed=1, train_per_class=4, val_per_class=2, bucket_size=12)
    return root


@pytest.fixture(scope="session")
def checkpoint(sample_dir, tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("model"))
    train(TrainConfig(data=sample_dir, output=out, **TINY_TRAINING))
    return os.path.join(out, "model.pt")
