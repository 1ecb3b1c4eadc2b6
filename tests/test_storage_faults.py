"""Storage faults against the GCS emulator: transient 5xx are retried, a permanent failure on one
object becomes an error row, and the run goes on."""
import os

import pyarrow.parquet as pq
from faulty_gcs import FaultyProxy

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions
from common.storage import read_bytes


def test_transient_faults_are_retried_and_a_broken_object_is_an_error_row(gcs, sample_dir, checkpoint, tmp_path,
                                                                          monkeypatch):
    gcs.mkdir("alexlabel-faults")
    images = sorted(f for f in os.listdir(f"{sample_dir}/bucket") if f.startswith("img_"))[:6]
    names = ["flaky_a.jpg", "flaky_b.jpg", "broken_c.jpg", *images[3:]]
    for source, name in zip(images, names, strict=True):
        gcs.put(f"{sample_dir}/bucket/{source}", f"alexlabel-faults/in/{name}")
    gcs.put(checkpoint, "alexlabel-faults/model.pt")
    with FaultyProxy(os.environ["STORAGE_EMULATOR_HOST"]) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        row = run(LabelOptions(inputs=["gs://alexlabel-faults/in/*"], checkpoint="gs://alexlabel-faults/model.pt",
                               output=str(tmp_path / "out")))
    assert (row["matched"], row["labeled"], row["errored"]) == (6, 5, 1)
    injected = {name.rsplit("/", 1)[-1].split("?")[0]: n for name, n in proxy.faults.items()}
    assert injected["flaky_a.jpg"] == injected["flaky_b.jpg"] == 2 and injected["broken_c.jpg"] >= 1
    (error,) = pq.read_table(str(next((tmp_path / "out" / "errors").glob("*/*.parquet"))),
                             partitioning=None).to_pylist()
    assert error["uri"] == "gs://alexlabel-faults/in/broken_c.jpg" and error["stage"] == "read"
    assert "403" in error["message"] or "injected fault" in error["message"], error


def test_a_loose_file_from_a_bucket_is_read_in_one_request(gcs, sample_dir, monkeypatch):
    """The trainer reads loose images one request each: a metadata request before every download would double the
    latency of training from a bucket."""
    from gcsfs import GCSFileSystem

    gcs.mkdir("alexlabel-reads")
    gcs.put(f"{sample_dir}/bucket/img_00001.jpg", "alexlabel-reads/one.jpg")
    with FaultyProxy(os.environ["STORAGE_EMULATOR_HOST"]) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        GCSFileSystem.clear_instance_cache()  # a client for the proxy
        try:
            data = read_bytes("gs://alexlabel-reads/one.jpg")
        finally:
            GCSFileSystem.clear_instance_cache()
    assert data == open(f"{sample_dir}/bucket/img_00001.jpg", "rb").read()
    assert [method for method, path in proxy.requests if "one.jpg" in path] == ["GET"], proxy.requests
