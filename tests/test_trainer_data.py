"""Training data: the paper crop, per-sample augmentation seeds, PCA lighting, and (uri, label) manifests."""
import csv
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from torchvision import transforms

from alexlabel.cli import main
from schemas.checkpoint import load_checkpoint
from schemas.transform import Preprocess, to_uint8_tensor
from trainer.data import (
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    DataError,
    EpochSampler,
    ImageDataset,
    manifest_samples,
    pca_lighting,
    train_transform,
)

PRE = Preprocess(resize=37, crop=32)


def noise_image(seed: int = 0, size=(50, 40)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def test_paper_crop_is_a_random_crop_of_the_resized_image_possibly_mirrored():
    img = noise_image()
    resized = to_uint8_tensor(transforms.Resize(37)(img))  # shorter side 40 -> 37: 46 x 37
    windows = {(i, j): resized[:, i:i + 32, j:j + 32] for i in range(resized.shape[1] - 31)
               for j in range(resized.shape[2] - 31)}
    found = set()
    torch.manual_seed(0)
    for _ in range(20):
        out = train_transform(PRE, "paper")(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
        hits = [(ij, flip) for ij, w in windows.items() for flip in (False, True)
                if torch.equal(out, w.flip(-1) if flip else w)]
        assert len(hits) == 1
        found.add(hits[0])
    assert len(found) > 5  # different offsets and both orientations


def test_default_crop_is_random_resized():
    out = train_transform(PRE)(noise_image())
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8


def test_augmentation_follows_the_sample_seed_and_leaves_the_global_rng_alone(tmp_path):
    noise_image(size=(60, 45)).save(tmp_path / "a.png")
    dataset = ImageDataset([(str(tmp_path / "a.png"), 3)], train_transform(PRE), PRE.resize)
    before = torch.get_rng_state()
    first, again, other = dataset[(0, 11)], dataset[(0, 11)], dataset[(0, 12)]
    assert torch.equal(torch.get_rng_state(), before)
    assert first[1] == 3 and torch.equal(first[0], again[0]) and not torch.equal(first[0], other[0])


def test_epoch_sampler_order_depends_on_seed_and_epoch_and_resumes_mid_epoch():
    sampler = EpochSampler(10, seed=0, batch_size=4)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert [len(b) for b in epoch0] == [4, 4, 2] and len(sampler) == 3
    assert sorted(i for batch in epoch0 for i, _ in batch) == list(range(10)) and epoch0 != epoch1
    assert list(EpochSampler(10, seed=1, batch_size=4)) != epoch0
    sampler.set_epoch(1, start=1)
    assert list(sampler) == epoch1[1:] and len(sampler) == 2


def test_epoch_sampler_shards_each_batch_across_processes():
    whole = list(EpochSampler(10, seed=3, batch_size=4))
    shards = [EpochSampler(10, seed=3, batch_size=4, rank=r, world=3) for r in range(3)]
    for shard in shards:
        shard.set_epoch(0, start=1)  # a mid-epoch resume, as in one process
    batches = [list(shard) for shard in shards]
    assert [len(b) for b in batches] == [2, 2, 2]  # every process the same number of batches
    for step, batch in enumerate(whole[1:]):
        parts = [b[step] for b in batches]
        assert sorted(key for part in parts for key in part) == sorted(batch)  # together: one process's batch
        assert parts == [batch[r::3] for r in range(3)]
    assert batches[2][1] == []  # the last batch has 2 samples: rank 2's share is empty, and it still steps


def test_pca_lighting_adds_alexnets_rgb_shift_before_normalization_in_float():
    torch.manual_seed(0)
    uint8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    torch.manual_seed(1)
    lit = pca_lighting(PRE.normalize(uint8), PRE.std, 0.1)
    torch.manual_seed(1)
    alpha = torch.randn(4, 3) * 0.1  # the same draw
    shift = IMAGENET_EIGVEC @ (alpha * IMAGENET_EIGVAL).T  # (3, N): the paper's per-image RGB shift in [0, 1]
    reference = PRE.normalize(uint8.float() + 255 * shift.T.view(4, 3, 1, 1))  # added to the pixels, unrounded
    torch.testing.assert_close(lit, reference)
    assert torch.equal(pca_lighting(PRE.normalize(uint8), PRE.std, 0.0), PRE.normalize(uint8))


def write_csv(path, rows, header=("uri", "label", "decision")):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])


def test_manifest_reads_csv_and_parquet_resolves_relative_uris_and_filters_decisions(tmp_path):
    write_csv(tmp_path / "m.csv", [("img/b.jpg", "owl", "accept"), ("/abs/a.jpg", "cat", "review"),
                                   ("gs://bkt/c.jpg", "cat", "accept"), ("../up/d.jpg", "owl", "review")])
    classes, samples = manifest_samples(str(tmp_path / "m.csv"))
    assert classes == ["cat", "owl"]
    assert samples == [(f"{tmp_path}/img/b.jpg", 1), ("/abs/a.jpg", 0), ("gs://bkt/c.jpg", 0),
                       (f"{tmp_path.parent}/up/d.jpg", 1)]
    assert manifest_samples(str(tmp_path / "m.csv"), decision="accept")[1] == [(f"{tmp_path}/img/b.jpg", 1),
                                                                             ("gs://bkt/c.jpg", 0)]
    table = pa.table({"uri": ["/x/1.jpg", "/x/2.jpg"], "label": ["owl", "cat"], "decision": ["accept", "review"],
                      "confidence": [0.9, 0.2]})
    (tmp_path / "labels" / "model=abc").mkdir(parents=True)
    pq.write_table(table, tmp_path / "labels" / "model=abc" / "part-0.parquet")
    assert manifest_samples(str(tmp_path / "labels"), ["cat", "owl"], "accept") == (["cat", "owl"], [("/x/1.jpg", 1)])


def test_manifest_problems_are_data_errors(tmp_path):
    write_csv(tmp_path / "m.csv", [("a.jpg", "cat")], header=("uri", "label"))
    with pytest.raises(DataError, match="has no column decision"):
        manifest_samples(str(tmp_path / "m.csv"), decision="accept")
    with pytest.raises(DataError, match="labels the training data lacks: cat"):
        manifest_samples(str(tmp_path / "m.csv"), ["dog"])
    with pytest.raises(DataError, match="does not exist"):
        manifest_samples(str(tmp_path / "missing.csv"))


def test_train_from_csv_manifests_keeping_accepted_rows(sample_dir, tmp_path):
    classes = sorted(os.listdir(os.path.join(sample_dir, "train")))
    rows = [(os.path.join(sample_dir, "train", c, f), c, "review" if c == "ring" else "accept")
            for c in classes for f in sorted(os.listdir(os.path.join(sample_dir, "train", c)))]
    write_csv(tmp_path / "train.csv", rows)
    # validation uris relative to the manifest, as in the sample set's bucket_truth.csv
    os.symlink(os.path.join(sample_dir, "val"), tmp_path / "val")
    write_csv(tmp_path / "val.csv", [(f"val/{c}/{f}", c) for c in classes if c != "ring"
                                     for f in sorted(os.listdir(os.path.join(sample_dir, "val", c)))],
              header=("uri", "label"))
    out = tmp_path / "model"
    result = CliRunner().invoke(main, [
        "train", "--data-manifest", str(tmp_path / "train.csv"), "--val-manifest", str(tmp_path / "val.csv"),
        "--decision", "accept", "--output", str(out), "--arch", "alexnet_small", "--width", "8", "--dropout", "0",
        "--image-size", "32", "--epochs", "1", "--batch-size", "16", "--optimizer", "adamw", "--lr", "1e-3",
        "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert "on 28 images, 7 classes" in result.output and "validating on 14" in result.output
    _, manifest = load_checkpoint(str(out / "model.pt"))
    assert manifest.class_names == [c for c in classes if c != "ring"]
    assert manifest.metrics["val_images"] == 14 and manifest.metrics["val_data"] == str(tmp_path / "val.csv")


def test_data_and_manifests_are_either_or(tmp_path):
    write_csv(tmp_path / "m.csv", [("a.jpg", "cat")], header=("uri", "label"))
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path), "--data-manifest", str(tmp_path / "m.csv"),
                                       "--val-manifest", str(tmp_path / "m.csv"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "Error: give either --data DIR (with train/ and val/) or both --data-manifest and --val-manifest"]
