"""Training from and to gs:// against a real GCS protocol server: data, last.pt, --resume and model.pt."""
import io
import json
import os

import torch
from click.testing import CliRunner

from alexlabel.cli import main
from schemas.checkpoint import load_checkpoint, split_state
from trainer.config import TrainConfig
from trainer.train import train

OPTIONS = ["--arch", "alexnet_small", "--width", "8", "--dropout", "0", "--image-size", "32", "--epochs", "2",
           "--batch-size", "8", "--workers", "0", "--optimizer", "adamw", "--lr", "0.001"]


def test_train_on_gs_stop_resume_and_load_the_model_from_gs(gcs, sample_dir, tmp_path):
    bucket = "alexlabel-train"
    gcs.mkdir(bucket)
    for split in ("train", "val"):
        for folder, _, files in os.walk(os.path.join(sample_dir, split)):
            for name in files:
                local = os.path.join(folder, name)
                gcs.put_file(local, f"{bucket}/data/{os.path.relpath(local, sample_dir)}")
    data, out = f"gs://{bucket}/data", f"gs://{bucket}/run"

    first = CliRunner().invoke(main, ["train", "--data", data, "--output", out, "--stop-after-steps", "4", *OPTIONS])
    assert first.exit_code == 0, first.output
    assert "stopped after epoch 1; continue with --resume" in first.output
    resumed = CliRunner().invoke(main, ["train", "--data", data, "--output", out, "--resume", *OPTIONS])
    assert resumed.exit_code == 0, resumed.output
    assert f"wrote {out}/model.pt" in resumed.output

    gcs.invalidate_cache()
    assert sorted(p.rsplit("/", 1)[-1] for p in gcs.ls(f"{bucket}/run")) == ["last.pt", "metrics.jsonl", "model.pt"]
    state_dict, manifest = load_checkpoint(f"{out}/model.pt")
    assert manifest.metrics["val_data"] == f"{data}/val" and manifest.metrics["val_images"] == 16
    assert manifest.class_names == sorted(os.listdir(os.path.join(sample_dir, "train")))
    rows = [json.loads(line) for line in gcs.cat(f"{bucket}/run/metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]

    # The same recipe on the local copy, in one go: the gs:// run, resumed across processes, matches it.
    train(TrainConfig(data=sample_dir, output=str(tmp_path), arch="alexnet_small",
                      arch_kwargs={"dropout": 0.0, "width": 8}, image_size=32, epochs=2, batch_size=8, workers=0,
                      optimizer="adamw", lr=0.001))
    on_gs = torch.load(io.BytesIO(gcs.cat(f"{bucket}/run/last.pt")), weights_only=True)["model"]
    local = torch.load(tmp_path / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(on_gs[k], local[k]) for k in local)
    assert manifest.model_version == load_checkpoint(str(tmp_path / "model.pt"))[1].model_version
    assert split_state(state_dict)[0].keys() == local.keys()  # the network's weights, and its projection
