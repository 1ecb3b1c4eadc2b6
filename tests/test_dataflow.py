"""Dataflow: option mapping, the worker image's pins, and an offline translation of the real job."""
import ast
import json
import os
import re

import pytest
from apache_beam.options.pipeline_options import (
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)
from click.testing import CliRunner

from alexlabel.cli import main
from beam_pipeline.options import LabelOptions, UsageError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_JOB = dict(inputs=["gs://b-in/images/**"], checkpoint="gs://b-in/model.pt", output="gs://b-out/labels",
               runner="DataflowRunner", project="my-project", region="us-central1", temp_location="gs://b-tmp/tmp",
               device="cuda", gpu_type="nvidia-l4", container_image="us-docker.pkg.dev/p/r/alexlabel-gpu:1")


def test_gpu_job_maps_to_dataflow_worker_options():
    opts = LabelOptions(**GPU_JOB).validate()
    options = PipelineOptions(opts.beam_flags())
    cloud, worker = options.view_as(GoogleCloudOptions), options.view_as(WorkerOptions)
    assert options.view_as(StandardOptions).runner == "DataflowRunner"
    assert (cloud.project, cloud.region, cloud.temp_location, cloud.staging_location) == (
        "my-project", "us-central1", "gs://b-tmp/tmp", "gs://b-tmp/tmp/staging")
    assert cloud.dataflow_service_options == ["worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"]
    assert worker.machine_type == "g2-standard-8"
    assert worker.sdk_container_image == GPU_JOB["container_image"]
    assert options.view_as(SetupOptions).setup_file == os.path.join(ROOT, "setup.py")
    assert cloud.job_name.startswith("alexlabel-") and cloud.job_name == cloud.job_name.lower()


def test_user_beam_args_come_last_and_win():
    opts = LabelOptions(**GPU_JOB, beam_args=["--machine_type=g2-standard-16"]).validate()
    assert PipelineOptions(opts.beam_flags()).view_as(WorkerOptions).machine_type == "g2-standard-16"


@pytest.mark.parametrize("change, message", [
    ({"project": ""}, "needs --project"),
    ({"temp_location": "/tmp/x"}, "--temp-location /tmp/x is not on gs://"),
    ({"inputs": ["/data/img.jpg"]}, "--input /data/img.jpg is not on gs://"),
    ({"device": "cpu"}, "drop --device cpu"),
    ({"gpu_type": ""}, "needs --gpu-type"),
    ({"gpu_type": "nvidia-new"}, "pass --machine-type"),
    ({"runner": "DirectRunner"}, "add --runner DataflowRunner"),
])
def test_bad_dataflow_options_are_one_line_errors(change, message):
    with pytest.raises(UsageError, match=message):
        LabelOptions(**{**GPU_JOB, **change}).validate()


def setup_pins() -> dict[str, str]:
    tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    requires = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "install_requires"))
    return {re.split(r"[\[=]", r)[0]: r.split("==")[1] for r in requires if "==" in r}


def test_gpu_dockerfile_pins_what_setup_py_pins():
    dockerfile = open(os.path.join(ROOT, "Dockerfile.gpu")).read()
    pins = setup_pins()
    assert set(pins) == {"apache-beam", "torch", "torchvision"}
    for name, version in pins.items():
        assert re.search(rf"\b{re.escape(name)}(\[gcp\])?=={re.escape(version)}\b", dockerfile), name
    assert f"apache/beam_python3.11_sdk:{pins['apache-beam']}" in dockerfile  # Beam's boot entrypoint, same version
    assert 'ENTRYPOINT ["/opt/apache/beam/boot"]' in dockerfile


def test_gpu_dockerfile_copies_every_package_setup_py_installs():
    dockerfile = open(os.path.join(ROOT, "Dockerfile.gpu")).read()
    setup_py = open(os.path.join(ROOT, "setup.py")).read()
    packages = set(re.findall(r'"(\w+)"', setup_py[setup_py.index("find_packages("):setup_py.index("]")]))
    assert packages and {name for name in packages if f"COPY {name} ./{name}" not in dockerfile} == set()


def test_dry_run_translates_the_whole_job_offline(gcs, sample_dir, checkpoint):
    gcs.mkdir("alexlabel-df")
    gcs.put(os.path.join(sample_dir, "bucket"), "alexlabel-df/images/", recursive=True)
    gcs.put(checkpoint, "alexlabel-df/model.pt")
    result = CliRunner().invoke(main, [
        "label", "--input", "gs://alexlabel-df/images/**", "--checkpoint", "gs://alexlabel-df/model.pt",
        "--output", "gs://alexlabel-df/out", "--runner", "DataflowRunner", "--project", "test-project",
        "--region", "us-central1", "--temp-location", "gs://alexlabel-df/tmp", "--device", "cuda",
        "--gpu-type", "nvidia-l4", "--container-image", "example.com/alexlabel-gpu:test", "--dry-run", "--no_auth"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[: result.output.rindex("}") + 1])
    assert "--dry_run=True" in printed["beam_options"]
    assert {"MatchImages", "PrepareImages", "Classify", "ToRows", "WriteLabels",
            "WriteErrors"} <= set(printed["translated_transforms"])
    assert not gcs.exists("alexlabel-df/out")  # nothing written, nothing submitted


def test_streaming_job_with_notifications_and_model_watch_translates(gcs, sample_dir, checkpoint):
    gcs.mkdir("alexlabel-stream")
    gcs.put(checkpoint, "alexlabel-stream/models/model.pt")
    result = CliRunner().invoke(main, [
        "label", "--input", "gs://alexlabel-stream/incoming/**", "--checkpoint", "gs://alexlabel-stream/models/model.pt",
        "--output", "gs://alexlabel-stream/out", "--runner", "DataflowRunner", "--project", "test-project",
        "--region", "us-central1", "--temp-location", "gs://alexlabel-stream/tmp", "--streaming",
        "--notifications", "projects/test-project/subscriptions/new-images", "--window-seconds", "300",
        "--watch-model", "gs://alexlabel-stream/models/*.pt", "--dry-run", "--no_auth"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[: result.output.rindex("}") + 1])
    assert "--streaming" in printed["beam_options"]
    assert {"NewObjects", "Window", "WatchModel", "Classify", "WriteLabels", "WriteErrors"} <= set(
        printed["translated_transforms"])
