"""`alexlabel shards` and `alexlabel export --to shards`: WebDataset shards on disk and gs://, read back whole."""
import hashlib
import os

import pytest
import webdataset
from commands import invoke, one_line_error
from outputs import label, write_images, write_output
from PIL import Image

import schemas.shards
from output_tools.cli import SHARD_MB
from schemas.shards import SHARD_BYTES, ShardError, open_shard_set, read_shard


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def images_under(folder: str) -> dict[str, str]:
    """{path: sha256} of every file under folder."""
    return {os.path.join(d, f): sha(open(os.path.join(d, f), "rb").read()) for d, _, files in os.walk(folder)
            for f in files}


def read_back(dest: str) -> tuple[list[str], list]:
    """The classes and every sample of a shard set, shard after shard, as the index lists them."""
    shard_set = open_shard_set(dest)
    samples = [s for shard in shard_set.shards for s in read_shard(shard.url)]
    assert len(samples) == shard_set.count
    return shard_set.classes, samples


def test_an_imagefolder_root_becomes_train_and_val_sets_of_its_bytes_shuffled(sample_dir, tmp_path):
    result = invoke("shards", sample_dir, tmp_path / "shards")
    assert result.exit_code == 0, result.output
    lines = iter(result.output.splitlines())
    for split, n in (("train", 32), ("val", 16)):
        assert sorted(os.listdir(tmp_path / "shards" / split)) == ["index.json", "shard-000000.tar"]
        megabytes = os.path.getsize(tmp_path / "shards" / split / "shard-000000.tar") / 2**20
        assert next(lines) == (f"wrote {n} images in 1 shard ({megabytes:.1f} MB) to {tmp_path}/shards/{split}; "
                               "0 unreadable left out")
        classes, samples = read_back(str(tmp_path / "shards" / split))
        assert classes == sorted(os.listdir(f"{sample_dir}/train"))
        assert {s.uri: sha(s.image) for s in samples} == images_under(f"{sample_dir}/{split}")  # whole and unchanged
        assert len({s.uri for s in samples}) == len(samples)                                    # each once
        assert all(classes[s.label_index] == os.path.basename(os.path.dirname(s.uri)) for s in samples)
        assert [s.uri for s in samples] != sorted(s.uri for s in samples)                      # shuffled


def test_a_small_shard_size_gives_several_shards_of_about_that_size(sample_dir, tmp_path):
    dest = tmp_path / "train"
    assert invoke("shards", f"{sample_dir}/train", dest, "--shard-size", 0.1).exit_code == 0
    shard_set = open_shard_set(str(dest))
    sizes = [os.path.getsize(s.url) for s in shard_set.shards]
    target, one_image = 0.1 * 2**20, max(os.path.getsize(p) for p in images_under(f"{sample_dir}/train"))
    assert len(sizes) >= 4 and shard_set.count == 32
    over = one_image + 16 * 1024  # a shard ends after the image that reaches the target; tar pads to 10 KiB records
    assert all(target <= size < target + over for size in sizes[:-1]) and sizes[-1] < target + over


def test_webdataset_itself_reads_our_shards(sample_dir, tmp_path):
    dest = tmp_path / "train"
    assert invoke("shards", f"{sample_dir}/train", dest, "--shard-size", 0.2).exit_code == 0
    urls = [s.url for s in open_shard_set(str(dest)).shards]
    read = list(webdataset.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg", "json"))
    assert len(read) == 32 and len(urls) > 1
    for image, meta in read:
        assert isinstance(image, Image.Image) and image.width >= 200
        assert meta["label"] == os.path.basename(os.path.dirname(meta["uri"]))


def test_the_seed_decides_the_order(sample_dir, tmp_path):
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert invoke("shards", f"{sample_dir}/val", tmp_path / name, "--seed", seed).exit_code == 0
    orders = {name: [s.uri for s in read_back(str(tmp_path / name))[1]] for name in "abc"}
    assert orders["a"] == orders["b"] != orders["c"] and sorted(orders["a"]) == sorted(orders["c"])


def test_a_manifest_is_written_with_its_labels_and_unreadable_images_listed(sample_dir, tmp_path):
    manifest = tmp_path / "m.csv"  # beside the sample set's, its uris are relative to it: made absolute here
    lines = open(f"{sample_dir}/bucket_truth.csv").read().replace("bucket/", f"{sample_dir}/bucket/").splitlines()
    manifest.write_text("\n".join([*lines, *(f"{sample_dir}/gone{i}.jpg,star" for i in range(6))]) + "\n")
    result = invoke("shards", manifest, tmp_path / "out")
    assert result.exit_code == 1, result.output  # as export --to imagefolder: not all of the source is there
    assert result.stdout.startswith(f"wrote {len(lines) - 1} images in 1 shard (") and \
        result.stdout.endswith(f"MB) to {tmp_path}/out; 6 unreadable left out\n")
    *listed, error = result.stderr.splitlines()
    assert len(listed) == 6 and listed[-1] == "  and 1 more" and f"{sample_dir}/gone" in listed[0]
    assert error == (f"Error: 6 images could not be read and are not in {tmp_path}/out (listed above); fix or remove "
                     "them and write again, or train on the shards as they are")
    assert "FileNotFoundError" in listed[0]
    truth = dict(line.split(",") for line in lines[1:])
    classes, samples = read_back(str(tmp_path / "out"))
    assert classes == sorted(set(truth.values()))
    assert {s.uri: classes[s.label_index] for s in samples} == truth


def test_export_to_shards_has_the_exports_labels_a_persons_winning(tmp_path):
    from output_tools.reviews import ReviewLog, review_row

    a, b, c = write_images(tmp_path, ["a.jpg", "b.png", "c.jpg"])
    rows = [label(a, "cat", 0.9), label(b, "cat", 0.3), label(c, "dog", 0.8)]
    out = write_output(str(tmp_path / "out"), rows)
    log = ReviewLog(out, "s1")
    log.add(review_row(rows[1], "correct", "fox", "ana", "s1"))
    log.close()
    result = invoke("export", out, "--to", "shards", tmp_path / "data", "--decision", "accept")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("wrote 3 images in 1 shard (")
    classes, samples = read_back(str(tmp_path / "data"))
    assert classes == ["cat", "dog", "fox"]
    assert {s.uri: classes[s.label_index] for s in samples} == {a: "cat", b: "fox", c: "dog"}
    assert {s.uri: s.image for s in samples}[b] == open(b, "rb").read()

    refused = one_line_error(invoke("export", out, "--to", "shards", tmp_path / "data"))
    assert refused == f"Error: {tmp_path}/data holds shards already; choose another folder or pass --overwrite"
    assert invoke("export", out, "--to", "shards", tmp_path / "data", "--overwrite", "--shard-size", 1e-6,
                  "--reviewed-only").exit_code == 0
    assert read_back(str(tmp_path / "data"))[0] == ["fox"]
    assert one_line_error(invoke("export", out, "--to", "manifest", tmp_path / "m.csv", "--overwrite")) == (
        "Error: --shard-size and --overwrite are for --to shards")


def test_export_to_shards_of_an_image_gone_writes_the_rest_and_exits_1(tmp_path):
    (kept,) = write_images(tmp_path, ["kept.jpg"])
    out = write_output(str(tmp_path / "out"), [label(kept, "cat", 0.9), label(str(tmp_path / "gone.jpg"), "cat", 0.9)])
    result = invoke("export", out, "--to", "shards", tmp_path / "data")
    assert result.exit_code == 1 and result.stdout.endswith("; 1 unreadable left out\n"), result.output
    assert result.stderr.splitlines()[-1] == (
        f"Error: 1 images could not be read and are not in {tmp_path}/data (listed above); fix or remove them and "
        "write again, or train on the shards as they are")
    assert [s.uri for s in read_back(str(tmp_path / "data"))[1]] == [kept]


def test_overwrite_replaces_the_whole_old_set(sample_dir, tmp_path):
    dest = tmp_path / "set"
    assert invoke("shards", f"{sample_dir}/train", dest, "--shard-size", 0.1).exit_code == 0
    assert invoke("shards", f"{sample_dir}/val", dest, "--overwrite").exit_code == 0
    assert sorted(os.listdir(dest)) == ["index.json", "shard-000000.tar"]
    assert {s.uri for s in read_back(str(dest))[1]} == set(images_under(f"{sample_dir}/val"))


def test_a_write_that_fails_midway_leaves_a_folder_nothing_reads(sample_dir, tmp_path, monkeypatch):
    real, calls = schemas.shards.atomic_write_bytes, []

    def second_fails(url, data):
        calls.append(url)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(url, data)

    monkeypatch.setattr(schemas.shards, "atomic_write_bytes", second_fails)
    dest = tmp_path / "set"
    assert one_line_error(invoke("shards", f"{sample_dir}/train", dest, "--shard-size", 0.1)) == (
        f"Error: could not write the shards to {dest} ([Errno 28] No space left on device); fix that and write them "
        "again with --overwrite")
    assert os.listdir(dest) == ["shard-000000.tar"]
    with pytest.raises(ShardError, match="has shards but no index.json"):
        open_shard_set(str(dest))
    assert "holds shards already" in one_line_error(invoke("shards", f"{sample_dir}/train", dest))


def test_bad_input_is_one_line_naming_the_fix_before_any_work(sample_dir, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "empty").mkdir()
    held = tmp_path / "held"
    assert invoke("shards", f"{sample_dir}/val", held / "train").exit_code == 0
    for args, message in [
        ((tmp_path / "missing", tmp_path / "d"), f"shard source {tmp_path}/missing does not exist; give an image "
         "folder (train/<class>/ and val/<class>/, or <class>/) or a uri,label manifest (CSV, Parquet or a labeling "
         "output)"),
        ((tmp_path / "empty", tmp_path / "d"), f"{tmp_path}/empty has no class folders; expect"),
        ((tmp_path / "file", tmp_path / "d"), f"manifest {tmp_path}/file is not a readable CSV or Parquet table"),
        ((sample_dir, held), f"{held}/train holds shards already; choose another folder or pass --overwrite"),
        ((sample_dir, tmp_path / "file"), f"shard destination {tmp_path}/file is a file; give a folder"),
        ((sample_dir, tmp_path / "d", "--decision", "accept"), "--decision filters manifest rows; drop it for an "
         "image folder"),
    ]:
        assert one_line_error(invoke("shards", *args)).startswith(f"Error: {message}"), args
    for size in (0, -1):  # click's own usage error
        result = invoke("shards", sample_dir, tmp_path / "d", "--shard-size", size)
        assert result.exit_code == 2 and result.output.endswith(
            f"Error: Invalid value for '--shard-size': {float(size)} is not in the range x>0.\n")
    assert not (tmp_path / "d").exists() and sorted(os.listdir(held)) == ["train"]
    assert one_line_error(invoke("export", tmp_path / "missing", "--to", "shards", tmp_path / "file")) == (
        f"Error: shard destination {tmp_path}/file is a file; give a folder")


def test_shards_to_and_from_a_bucket(gcs, sample_dir):
    gcs.mkdir("alexlabel-shards")
    for split in ("train", "val"):
        gcs.put(f"{sample_dir}/{split}", f"alexlabel-shards/data/{split}", recursive=True)
    source, dest = "gs://alexlabel-shards/data", "gs://alexlabel-shards/shards"
    for args in ((), ("--overwrite",)):  # the second replaces the first: its index goes, then its shards
        result = invoke("shards", source, dest, "--shard-size", 0.1, *args)
        assert result.exit_code == 0 and "wrote 16 images in 3 shards" in result.output, result.output
    assert "holds shards already" in one_line_error(invoke("shards", source, dest))
    for split in ("train", "val"):
        classes, samples = read_back(f"{dest}/{split}")
        assert all(s.url.startswith(f"{dest}/{split}/shard-") for s in open_shard_set(f"{dest}/{split}").shards)
        bucket = {"gs://" + p: sha(gcs.cat(p)) for p in gcs.find(f"alexlabel-shards/data/{split}")}
        assert {s.uri: sha(s.image) for s in samples} == bucket and len(samples) == len(bucket)
        assert all(classes[s.label_index] == s.uri.split("/")[-2] for s in samples)
    assert sorted(gcs.ls("alexlabel-shards/shards/val")) == [
        f"alexlabel-shards/shards/val/{name}" for name in ("index.json", *(f"shard-{i:06d}.tar" for i in range(3)))]


def test_the_clis_default_shard_size_is_the_formats():
    assert SHARD_MB * 2**20 == SHARD_BYTES
