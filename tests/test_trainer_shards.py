"""Training from WebDataset shards: each process its own shards and the same steps, shuffled epochs, an exact
mid-epoch resume, truncated shards counted, bad shard sets refused in one line, and the same accuracy as folders
when the shards come from a GCS server."""
import io
import json
import os

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from alexlabel.cli import main
from alexlabel.demo import DEMO_TRAINING
from alexlabel.sample_data import write_sample_data
from schemas.shards import ShardError, open_shard_set, write_shards
from schemas.transform import Preprocess, to_uint8_tensor
from trainer.config import TrainConfig
from trainer.data import list_image_folder, train_transform
from trainer.shards import ShardStream, image_set, shard_loader
from trainer.train import train


def numbered_images(folder, count: int, classes: int = 3, first: int = 0) -> list[tuple[str, int]]:
    """Tiny PNGs whose red and green say their number, so a batch says which samples it holds."""
    os.makedirs(folder, exist_ok=True)
    samples = []
    for i in range(first, first + count):
        path = os.path.join(folder, f"{i:04d}.png")
        Image.new("RGB", (8, 8), (i % 256, i // 256, 0)).save(path)
        samples.append((path, i % classes))
    return samples


def numbers(batch) -> list[int]:
    x, _, _ = batch
    return (x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long()).tolist()


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """100 numbered images in shards of uneven sizes (about 7 each, 15 shards)."""
    root = tmp_path_factory.mktemp("numbered")
    shard_set, failures = write_shards(numbered_images(root / "images", 100), ["a", "b", "c"], str(root / "shards"),
                                       shard_bytes=8_000)
    assert not failures and shard_set.count == 100 and len(shard_set.shards) > 8
    return shard_set


def epoch(stream: ShardStream, workers: int, number: int = 0, start: int = 0) -> list[list[int]]:
    stream.set_epoch(number, start)
    return [numbers(batch) for batch in shard_loader(stream, workers)]


def test_every_process_takes_its_own_shards_and_the_same_number_of_steps(numbered):
    streams = [ShardStream(numbered, to_uint8_tensor, 8, batch_size=8, seed=0, workers=2, rank=r, world=3)
               for r in range(3)]
    seen = [sum(epoch(s, workers=2), []) for s in streams]
    assert len({len(epoch(s, workers=2)) for s in streams}) == 1 and streams[0].steps == len(epoch(streams[0], 2))
    assert all(not set(a) & set(b) for i, a in enumerate(seen) for b in seen[i + 1:])  # no sample twice
    shards = [{shard.url for plan in s.plans() for shard in plan.shards} for s in streams]
    assert all(not a & b for i, a in enumerate(shards) for b in shards[i + 1:])


def test_each_epoch_shuffles_the_shards_and_the_samples_and_one_process_sees_almost_all(numbered):
    stream = ShardStream(numbered, to_uint8_tensor, 8, batch_size=8, seed=0, workers=2)
    first, second = sum(epoch(stream, 2, 0), []), sum(epoch(stream, 2, 1), [])
    assert first != second and len(set(first)) == len(first)
    assert len(first) >= 100 - 2 * 8  # at most a short batch per worker waits for a later epoch
    assert first != sorted(first)
    assert sum(epoch(stream, 2, 0), []) == first  # a function of seed and epoch alone


@pytest.mark.parametrize("start", [1, 2, 5, 9])
def test_a_resume_mid_epoch_makes_exactly_the_rest_of_the_epoch_with_the_same_augmentations(numbered, start):
    pre = Preprocess(resize=8, crop=6)
    stream = ShardStream(numbered, train_transform(pre), pre.resize, batch_size=8, seed=3, workers=2)
    stream.set_epoch(1)
    whole = list(shard_loader(stream, 2))
    stream.set_epoch(1, start)
    rest = list(shard_loader(stream, 2))
    assert len(rest) == len(whole) - start == len(stream)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(whole[start:], rest, strict=True))


def test_a_resume_is_exact_when_workers_run_out_of_batches_at_different_times(numbered, tmp_path):
    big, _ = write_shards(numbered_images(tmp_path / "big", 90, first=100), ["a", "b", "c"], str(tmp_path / "big"),
                          shard_bytes=40_000)
    mixed = type(numbered)(numbered.classes, [*big.shards[:3], *numbered.shards[:3]])
    assert min(s.count for s in big.shards[:3]) > 2 * max(s.count for s in numbered.shards[:3])
    stream = ShardStream(mixed, to_uint8_tensor, 8, batch_size=4, seed=0, workers=3)
    assert len({plan.batches for plan in stream.plans()}) == 3  # three workers, three lengths
    whole = epoch(stream, 3)
    seen, held = sum(whole, []), [n for s in mixed.shards for n in shard_numbers(s)]
    assert len(set(seen)) == len(seen) and set(seen) <= set(held) and len(seen) > len(held) - 3 * 4
    for start in range(1, len(whole)):
        assert epoch(stream, 3, start=start) == whole[start:]


def shard_numbers(shard) -> list[int]:
    from schemas.shards import read_shard
    return [int(os.path.basename(sample.uri)[:4]) for sample in read_shard(shard.url)]


def test_training_from_shards_stopped_mid_epoch_resumes_exactly(sample_dir, tmp_path):
    from test_trainer_checkpoints import NOISY, assert_same_training

    classes, samples = list_image_folder(f"{sample_dir}/train")
    write_shards(samples, classes, str(tmp_path / "data" / "train"), shard_bytes=12_000)
    write_shards(list_image_folder(f"{sample_dir}/val", classes)[1], classes, str(tmp_path / "data" / "val"))
    recipe = {**NOISY, "data": str(tmp_path / "data"), "workers": 2, "embedding_dim": 0}
    train(TrainConfig(output=str(tmp_path / "whole"), **recipe))
    train(TrainConfig(output=str(tmp_path / "stopped"), stop_after_steps=6, **recipe))  # epoch 2, step 2 of 3
    assert json.loads(torch.load(tmp_path / "stopped" / "last.pt", weights_only=True)["state"])["step"] == 2
    train(TrainConfig(output=str(tmp_path / "stopped"), resume=True, **recipe))
    assert_same_training(str(tmp_path / "whole"), str(tmp_path / "stopped"))


def test_a_truncated_shard_gives_its_whole_samples_and_counts_the_rest_unreadable(numbered, tmp_path):
    shard = numbered.shards[0]
    with open(shard.url, "rb") as f:
        data = f.read()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:len(data) // 2])
    damaged = type(numbered)(numbered.classes, [type(shard)(str(cut), shard.count), *numbered.shards[1:]])
    stream = ShardStream(damaged, to_uint8_tensor, 8, batch_size=4, seed=0, workers=0)
    batches = list(shard_loader(stream, 0))
    readable = sum(len(y) for _, y, _ in batches)
    unreadable = sum(bad for _, _, bad in batches)
    assert 0 < unreadable < shard.count and readable + unreadable == 4 * stream.steps


def test_a_shard_folder_without_an_index_is_refused_in_one_line(numbered, tmp_path):
    os.makedirs(tmp_path / "train")
    with open(numbered.shards[0].url, "rb") as f:
        (tmp_path / "train" / "shard-000000.tar").write_bytes(f.read())
    with pytest.raises(ShardError, match=r"has shards but no index\.json .*`alexlabel shards`"):
        open_shard_set(str(tmp_path / "train"))


def test_a_pattern_matching_no_shard_and_fewer_shards_than_processes_are_one_line(numbered):
    folder = os.path.dirname(numbered.shards[0].url)
    assert len(open_shard_set(f"{folder}/shard-00000{{0..2}}.tar").shards) == 3
    with pytest.raises(ShardError, match=r"matches none of the \d+ shards in .*index\.json; check the pattern"):
        open_shard_set(f"{folder}/train-*.tar")
    with pytest.raises(ShardError, match=r"1 training shards cannot feed 2 processes; write at least 2"):
        ShardStream(open_shard_set(f"{folder}/shard-000000.tar"), to_uint8_tensor, 8, 8, 0, 0, rank=0, world=2)


def test_a_shard_pattern_trains_with_val_data_and_alone_is_one_line(sample_dir, tmp_path):
    classes, samples = list_image_folder(f"{sample_dir}/train")
    write_shards(samples, classes, str(tmp_path / "train"), shard_bytes=12_000)
    pattern = str(tmp_path / "train" / "shard-*.tar")
    alone = CliRunner().invoke(main, ["train", "--data", pattern, "--output", str(tmp_path / "o")])
    assert alone.exit_code == 1 and alone.output == (f"Error: --data {pattern} is a shard set, the training set "
                                                     "itself; give the validation set with --val-data\n")
    result = CliRunner().invoke(main, ["train", "--data", pattern, "--val-data", f"{sample_dir}/val", "--output",
                                       str(tmp_path / "o"), "--arch", "alexnet_small", "--width", "8",
                                       "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0",
                                       "--embedding-dim", "4"])
    assert result.exit_code == 0, result.output
    assert f"training alexnet_small on {len(samples)} images" in result.output
    assert "fitted the embedding projection on 32 training images" in result.output  # from the shards


def test_val_shards_of_other_classes_are_refused_naming_the_difference(sample_dir, tmp_path):
    classes, samples = list_image_folder(f"{sample_dir}/train")
    write_shards(samples, classes, str(tmp_path / "data" / "train"))
    other = [*classes[:-1], "zebra"]
    write_shards(list_image_folder(f"{sample_dir}/val", classes)[1], other, str(tmp_path / "data" / "val"))
    with pytest.raises(ShardError, match=f"missing {classes[-1]}; extra zebra; write both sets in one"):
        image_set(str(tmp_path / "data" / "val"), classes)
    result = CliRunner().invoke(main, ["train", "--data", str(tmp_path / "data"), "--output", str(tmp_path / "o")])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "Error: the classes of" in result.output


def test_training_from_shards_on_a_gcs_server_matches_training_from_the_folders(gcs, tmp_path):
    """The demo's recipe and sample set, which train to about 0.97 val top-1 from folders (less would leave the
    seed's noise larger than any difference worth finding), and the same from shards served by GCS."""
    data = tmp_path / "sample"
    write_sample_data(str(data))
    gcs.mkdir("alexlabel-shard-train")
    classes, samples = list_image_folder(f"{data}/train")
    for split, split_samples in (("train", samples), ("val", list_image_folder(f"{data}/val", classes)[1])):
        write_shards(split_samples, classes, f"gs://alexlabel-shard-train/data/{split}", shard_bytes=1_000_000)
    gcs.invalidate_cache()
    assert len(open_shard_set("gs://alexlabel-shard-train/data/train").shards) >= 8

    def val_top1(source: str, output: str) -> float:
        return train(TrainConfig(data=source, output=output, embedding_dim=0, **DEMO_TRAINING)).metrics["val_top1"]

    from_folders = val_top1(str(data), str(tmp_path / "folders"))
    from_shards = val_top1("gs://alexlabel-shard-train/data", str(tmp_path / "shards"))
    assert min(from_folders, from_shards) > 0.9 and abs(from_shards - from_folders) <= 0.06, (from_folders,
                                                                                             from_shards)


def test_a_png_sample_keeps_its_bytes_and_label(numbered):
    from schemas.shards import read_shard
    sample = next(read_shard(numbered.shards[0].url))
    with open(sample.uri, "rb") as f:
        assert f.read() == sample.image
    assert Image.open(io.BytesIO(sample.image)).size == (8, 8) and sample.label_index == int(sample.uri[-8:-4]) % 3


@pytest.mark.parametrize("views", [[], ["--ten-crop"]])
def test_evaluate_scores_shards_as_it_scores_their_folder(checkpoint, sample_dir, tmp_path, views):
    from schemas.checkpoint import load_checkpoint
    classes = load_checkpoint(checkpoint)[1].class_names
    write_shards(list_image_folder(f"{sample_dir}/val", classes)[1], classes, str(tmp_path / "val"),
                 shard_bytes=12_000)

    def report(data: str) -> dict:
        out = tmp_path / f"{len(os.listdir(tmp_path))}.json"
        result = CliRunner().invoke(main, ["evaluate", "--checkpoint", checkpoint, "--data", data, "--json", str(out),
                                           "--workers", "2", *views])
        assert result.exit_code == 0, result.output
        return json.loads(out.read_text())

    from_folder, from_shards = report(f"{sample_dir}/val"), report(str(tmp_path / "val"))
    assert from_shards["images"] == from_folder["images"] == 16
    assert from_shards == from_folder  # every figure: the same images, prepared the same way
