"""The labeling pipeline for real: DirectRunner over generated files, Parquet read back and checked."""
import glob
import hashlib
import os
import re
import shutil

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from beam_pipeline import decode, model_handler
from beam_pipeline.decode import ImageFile, ImageFileCoder, PrepareImage, eval_tensors_from_jpegs
from beam_pipeline.launch import counter, run
from beam_pipeline.options import LabelOptions, UsageError
from beam_pipeline.pipeline import build, make_pipeline
from beam_pipeline.rows import Failure
from beam_pipeline.write import make_table_folders
from schemas.checkpoint import load_checkpoint
from schemas.images import decode_image
from schemas.tables import TABLES
from schemas.transform import Preprocess, eval_tensor_from_bytes
from trainer.models import load_model

TOP_K, THRESHOLD = 3, 0.3


@pytest.fixture(scope="module")
def bucket(sample_dir, tmp_path_factory) -> str:
    """The sample bucket plus a non-image file and an upper-case extension in a nested folder."""
    root = str(tmp_path_factory.mktemp("bucket"))
    shutil.copytree(os.path.join(sample_dir, "bucket"), root, dirs_exist_ok=True)
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("not an image; the extension filter leaves it out")
    os.makedirs(os.path.join(root, "nested"))
    shutil.copy(os.path.join(root, "img_00000.jpg"), os.path.join(root, "nested", "UPPER.JPG"))
    return root


@pytest.fixture(scope="module")
def labeled(bucket, checkpoint, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("out"))
    # Two overlapping patterns: every file must still be labeled exactly once.
    opts = LabelOptions(inputs=[f"{bucket}/**", f"{bucket}/img_0000*.jpg"], checkpoint=checkpoint, output=out,
                        top_k=TOP_K, accept_threshold=THRESHOLD, precision="fp32", min_batch_size=1,
                        max_batch_size=5)
    return out, run(opts)


def read_table(out: str, table: str):
    files = sorted(glob.glob(f"{out}/{table}/*/*.parquet"))
    assert files, f"no {table} files"
    for f in files:
        assert pq.read_schema(f).equals(TABLES[table], check_metadata=False), f
    return pq.read_table(files, partitioning=None).to_pylist()


def image_files(bucket: str) -> set[str]:
    return {p for p in glob.glob(f"{bucket}/**", recursive=True) if p.lower().endswith((".jpg", ".png"))}


def test_every_matched_file_is_labeled_or_an_error_exactly_once(labeled, bucket):
    out, row = labeled
    labels, errors = read_table(out, "labels"), read_table(out, "errors")
    uris = [r["uri"] for r in labels] + [r["uri"] for r in errors]
    assert len(uris) == len(set(uris)) == row["matched"] == 17
    assert set(uris) == image_files(bucket)
    assert (row["labeled"], row["errored"], row["skipped"]) == (len(labels), len(errors), 0) == (13, 4, 0)
    assert not os.path.exists(f"{out}/.beam-temp")  # Beam's temp files are gone, and their folder with them


def test_broken_files_land_in_errors_with_stage_and_message(labeled, checkpoint):
    out, row = labeled
    errors = {os.path.basename(r["uri"]): r for r in read_table(out, "errors")}
    assert set(errors) == {"broken_empty.jpg", "broken_truncated.jpg", "broken_random.png", "broken_html.jpg"}
    assert {r["stage"] for r in errors.values()} == {"decode"}
    assert "truncated" in errors["broken_truncated.jpg"]["message"]
    assert "doctype" in errors["broken_html.jpg"]["message"] and errors["broken_empty.jpg"]["size_bytes"] == 0
    version = load_checkpoint(checkpoint)[1].model_version
    assert all(r["model_version"] == version and r["run_id"] == row["run_id"] and r["at"] for r in errors.values())


def test_label_rows_hold_calibrated_top_k_from_the_checkpoint(labeled, checkpoint):
    out, row = labeled
    module, manifest, _, _ = load_model(checkpoint)
    for r in read_table(out, "labels"):
        with open(r["uri"], "rb") as f:
            data = f.read()
        assert r["content_sha256"] == hashlib.sha256(data).hexdigest() and r["size_bytes"] == len(data)
        assert (r["width"], r["height"]) == Image.open(r["uri"]).size
        # The same image through the checkpoint's own preprocessing and temperature, outside Beam.
        pre = manifest.preprocess
        x = pre.normalize(pre.eval_tensor(decode_image(data, pre.resize)[0])[None])
        with torch.no_grad():
            probs = (module(x) / manifest.temperature).softmax(1)[0]
        expected = probs.topk(TOP_K).values
        assert r["topk_confidences"] == pytest.approx(expected.tolist(), abs=1e-4)
        # Each class named has the probability given (classes tied to float rounding may come in either order).
        assert r["topk_confidences"] == pytest.approx(probs[r["topk_indices"]].tolist(), abs=1e-6)
        assert r["topk_labels"] == [manifest.class_names[i] for i in r["topk_indices"]]
        assert (r["label"], r["label_index"], r["confidence"]) == (
            r["topk_labels"][0], r["topk_indices"][0], r["topk_confidences"][0])
        assert r["margin"] == pytest.approx(r["topk_confidences"][0] - r["topk_confidences"][1])
        assert r["decision"] == ("accept" if r["confidence"] >= THRESHOLD else "review")
        assert (r["model_version"], r["run_id"]) == (manifest.model_version, row["run_id"])


def test_runs_table_records_the_run(labeled, checkpoint):
    out, row = labeled
    (stored,) = read_table(out, "runs")
    assert stored["run_id"] == row["run_id"] and stored["checkpoint"] == checkpoint
    assert (stored["matched"], stored["labeled"], stored["errored"]) == (17, 13, 4)
    assert stored["images_per_second"] > 0 and stored["finished_at"] >= stored["started_at"]
    assert '"top_k": 3' in stored["options_json"]
    # Hive-style layout, and nothing but finished Parquet files under the output.
    version = load_checkpoint(checkpoint)[1].model_version
    files = sorted(os.path.relpath(p, out) for p in glob.glob(f"{out}/**", recursive=True) if os.path.isfile(p))
    shard = re.compile(rf"(labels|errors)/model={version}/{row['run_id']}-(\d{{5}})-of-(\d{{5}})\.parquet")
    shards = [shard.fullmatch(f) for f in files if not f.startswith("runs/")]
    assert files[-1] == f"runs/model={version}/{row['run_id']}.parquet" and all(shards) and shards
    assert {m.group(1) for m in shards} == {"labels", "errors"}
    assert all(int(m.group(2)) < int(m.group(3)) <= 2 for m in shards)  # few files: one per worker at most


def test_tables_read_directly_as_hive_partitioned_datasets(labeled, checkpoint):
    import duckdb
    import pyarrow.dataset as ds

    out, _ = labeled
    version = load_checkpoint(checkpoint)[1].model_version
    table = ds.dataset(f"{out}/labels", format="parquet", partitioning="hive").to_table()
    assert table.num_rows == 13 and set(table.column("model").to_pylist()) == {version}
    count, = duckdb.sql(f"SELECT count(*) FROM read_parquet('{out}/errors/*/*.parquet') "
                        f"WHERE model = '{version}' AND model_version = '{version}'").fetchall()[0]
    assert count == 4


def test_skip_existing_labels_only_the_rest_and_a_finished_job_writes_nothing(bucket, checkpoint, tmp_path):
    out = str(tmp_path / "out")

    def label(pattern, **kw):
        return run(LabelOptions(inputs=[pattern], checkpoint=checkpoint, output=out, skip_existing=True, **kw))

    first = label(f"{bucket}/img_0000*.jpg")  # 10 of the 13 good images
    assert (first["matched"], first["labeled"], first["errored"], first["skipped"]) == (10, 10, 0, 0)
    rest = label(f"{bucket}/**")
    assert (rest["matched"], rest["labeled"], rest["errored"], rest["skipped"]) == (17, 3, 4, 10)
    again = label(f"{bucket}/**")
    assert (again["matched"], again["labeled"], again["errored"], again["skipped"]) == (17, 0, 0, 17)
    retried = label(f"{bucket}/**", retry_errors=True)
    assert (retried["labeled"], retried["errored"], retried["skipped"]) == (0, 4, 13)
    uris = [r["uri"] for r in read_table(out, "labels")]
    assert len(uris) == len(set(uris)) == 13
    assert len(read_table(out, "runs")) == 4


def test_uri_lists_in_text_and_parquet_are_labeled_exactly_once(bucket, checkpoint, labeled, tmp_path):
    out, _ = labeled
    text = tmp_path / "uris.txt"
    missing = f"{bucket}/gone.jpg"
    text.write_text(f"{bucket}/img_00001.jpg\n\n{bucket}/README.txt\n{missing}\n{bucket}/img_00001.jpg\n")
    labels_files = glob.glob(f"{out}/labels/*/*.parquet")  # a labels table is a list of URIs too
    opts = LabelOptions(inputs=[], input_lists=[str(text), *labels_files], checkpoint=checkpoint,
                        output=str(tmp_path / "out"))
    row = run(opts)
    assert (row["matched"], row["labeled"], row["errored"]) == (15, 13, 2)  # 13 labeled before + 2 listed non-images
    errors = {r["uri"]: r for r in read_table(str(tmp_path / "out"), "errors")}
    assert errors[missing]["stage"] == "read" and errors[f"{bucket}/README.txt"]["stage"] == "decode"


def test_a_local_run_loads_the_checkpoint_once(bucket, checkpoint, tmp_path, monkeypatch):
    """The launcher's check load is the one the DirectRunner's workers use: no second load per run."""
    loads = []
    real = model_handler.load_classifier
    monkeypatch.setattr(model_handler, "load_classifier", lambda *args: loads.append(args) or real(*args))
    row = run(LabelOptions(inputs=[f"{bucket}/img_0000*.jpg"], checkpoint=checkpoint, output=str(tmp_path)))
    assert row["labeled"] == 10 and loads == [(checkpoint, "cpu", "auto")]


def test_a_failed_start_keeps_no_model_loaded(bucket, checkpoint, tmp_path, monkeypatch):
    """The launcher loads the model to check it; when the run cannot start, a long-lived process (a notebook,
    --watch) must not go on holding the weights."""
    import gc
    import weakref

    loaded = []
    real = model_handler.load_classifier
    monkeypatch.setattr(model_handler, "load_classifier",
                        lambda *args: loaded.append(weakref.ref((c := real(*args)).module)) or c)
    with pytest.raises(UsageError, match="no image files match"):
        run(LabelOptions(inputs=[f"{bucket}/nothing-*.jpg"], checkpoint=checkpoint, output=str(tmp_path)))
    gc.collect()
    assert len(loaded) == 1 and loaded[0]() is None


def test_prepared_images_have_a_coder_of_their_own_not_pickles():
    """PrepareImage's output gets ImageFileCoder: Beam's element-size sampling no longer pickles every image,
    and no other tensor in the process is touched (the coder is registered for ImageFile, not torch.Tensor).

    Built with the job's own Beam options: Beam infers element types, and so coders, only while its
    construction-time type checks are on.
    """
    opts = LabelOptions(inputs=["/data/*.jpg"], checkpoint="/models/model.pt", output="/out").validate()
    images = make_pipeline(opts) | beam.Create(["x"]) | beam.ParDo(PrepareImage(Preprocess(256, 224)))
    coder = beam.coders.registry.get_coder(images.element_type)
    assert isinstance(coder, ImageFileCoder)
    assert not isinstance(beam.coders.registry.get_coder(torch.Tensor), ImageFileCoder)
    pixels = torch.randint(0, 256, (3, 224, 224), dtype=torch.uint8)
    for image in (ImageFile("gs://b/a.jpg", 1234, "ab" * 32, 500, 375, pixels),
                  ImageFile("gs://b/c.jpg", 0, failure=Failure("decode", "ValueError", "file is empty"))):
        encoded = coder.encode(image)
        back = coder.decode(encoded)
        assert [getattr(back, f) for f in ("uri", "size_bytes", "content_sha256", "width", "height", "failure")] == \
            [getattr(image, f) for f in ("uri", "size_bytes", "content_sha256", "width", "height", "failure")]
        assert (back.pixels is None) == (image.pixels is None)
        assert image.pixels is None or torch.equal(back.pixels, pixels)
        assert coder.estimate_size(image) == len(encoded)


def test_file_urls_and_relative_list_lines_name_each_file_once(bucket, checkpoint, tmp_path, monkeypatch):
    """`file:///path` (what fsspec's unstrip_protocol gives, and the trainer writes) and a relative line in a
    URI list are the same file as its plain absolute path: one row, under one uri, and resume sees it."""
    out = str(tmp_path / "out")
    listing = tmp_path / "lists" / "uris.txt"
    listing.parent.mkdir()
    relative = os.path.relpath(f"{bucket}/img_00002.jpg", listing.parent)
    listing.write_text(f"file://{bucket}/img_00001.jpg\n{relative}\n")
    monkeypatch.chdir(tmp_path)  # relative lines are taken from the list's folder, not from here
    first = run(LabelOptions(inputs=[f"file://{bucket}/img_0000[0-2].jpg"], input_lists=[str(listing)],
                             checkpoint=checkpoint, output=out))
    assert (first["matched"], first["labeled"], first["errored"]) == (3, 3, 0)
    assert sorted(r["uri"] for r in read_table(out, "labels")) == [f"{bucket}/img_0000{i}.jpg" for i in range(3)]
    again = run(LabelOptions(inputs=[f"{bucket}/img_0000[0-3].jpg"], checkpoint=checkpoint, output=out,
                             skip_existing=True))
    assert (again["matched"], again["labeled"], again["skipped"]) == (4, 1, 3)


def test_tables_are_zstd_parquet(labeled):
    out, _ = labeled
    for table in ("labels", "errors", "runs"):
        for f in glob.glob(f"{out}/{table}/*/*.parquet"):
            meta = pq.ParquetFile(f).metadata
            assert {meta.row_group(0).column(i).compression for i in range(meta.num_columns)} == {"ZSTD"}, f


def test_the_parquet_sink_keeps_its_temp_folder_outside_the_tables(tmp_path, monkeypatch):
    """The one place alexlabel reaches into Beam's privates: if a Beam upgrade changes it, this fails."""
    from apache_beam.io.filebasedsink import FileBasedSink

    from beam_pipeline.write import temp_folder_outside_tables

    def sink_writer():
        return beam.io.WriteToParquet(f"{tmp_path}/labels/model=m/run", TABLES["labels"])

    write = temp_folder_outside_tables(sink_writer(), f"{tmp_path}/.beam-temp")
    temp = write._sink.initialize_write()  # what Beam calls when a write starts
    assert temp.startswith(f"{tmp_path}/.beam-temp/run-") and os.path.isdir(temp)
    assert not os.path.exists(f"{tmp_path}/labels")
    monkeypatch.setattr(FileBasedSink, "_create_temp_dir", lambda self, prefix, suffix: prefix)
    with pytest.raises(RuntimeError, match="_create_temp_dir.*changed"):
        temp_folder_outside_tables(sink_writer(), f"{tmp_path}/.beam-temp")


def small_jpeg(path, size, seed: int) -> bytes:
    """A photo-like JPEG below draft mode's threshold for the test checkpoint: the kind --gpu-decode keeps."""
    pixels = torch.randint(0, 256, (size[1] // 4, size[0] // 4, 3), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8).numpy()
    Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR).save(path, quality=90)
    return path.read_bytes()


def test_gpu_decode_chain_labels_as_the_cpu_path_does(bucket, checkpoint, tmp_path):
    """--gpu-decode's chain run on the CPU (CI has no GPU): JPEGs pass PrepareImage still encoded and the
    handler decodes each batch on the model's device. Every image must come out exactly as without it,
    including a truncated JPEG that only fails once the handler decodes it."""
    manifest = load_checkpoint(checkpoint)[1]
    images = tmp_path / "images"
    images.mkdir()
    kept = [small_jpeg(images / f"small_{i}.jpg", (60 + 7 * i, 48), seed=i) for i in range(5)]
    (images / "truncated.jpg").write_bytes(kept[0][:len(kept[0]) // 2])
    for name in ("img_00001.jpg", "img_00002.jpg", "broken_random.png"):  # draft-mode JPEGs and a non-JPEG
        shutil.copy(f"{bucket}/{name}", images / name)
    assert all(eval_tensor_from_bytes(data, manifest.preprocess, keep_jpeg=True)[0].dim() == 1 for data in kept)

    outputs = {}
    for gpu_decode in (False, True):
        out = str(tmp_path / f"out-{gpu_decode}")
        opts = LabelOptions(inputs=[f"{images}/*"], checkpoint=checkpoint, output=out, top_k=TOP_K,
                            precision="fp32", min_batch_size=4, max_batch_size=4, gpu_decode=gpu_decode,
                            run_id=f"gpu-decode-{gpu_decode}")
        make_table_folders(out, manifest.model_version)
        with make_pipeline(opts) as p:  # validate() refuses --gpu-decode without a GPU, so build directly
            build(p, opts, manifest, done_files={})
        assert counter(p.result, "passed_encoded") == (6 if gpu_decode else 0)  # 5 small JPEGs + truncated
        labels, errors = read_table(out, "labels"), read_table(out, "errors")
        assert (len(labels), len(errors)) == (7, 2)  # each file exactly once
        outputs[gpu_decode] = {r["uri"]: r for r in labels}, {r["uri"]: r for r in errors}

    (labels, errors), (gpu_labels, gpu_errors) = outputs[False], outputs[True]
    assert set(gpu_labels) == set(labels)
    for uri, row in labels.items():
        assert gpu_labels[uri]["topk_labels"] == row["topk_labels"], uri
        assert gpu_labels[uri]["topk_confidences"] == pytest.approx(row["topk_confidences"], abs=1e-6), uri
        assert (gpu_labels[uri]["width"], gpu_labels[uri]["content_sha256"]) == (row["width"], row["content_sha256"])
    assert set(errors) == set(gpu_errors) == {f"{images}/truncated.jpg", f"{images}/broken_random.png"}
    for uri, row in errors.items():
        assert {k: gpu_errors[uri][k] for k in ("stage", "error_type", "message", "size_bytes")} == \
            {k: row[k] for k in ("stage", "error_type", "message", "size_bytes")}


def test_the_batch_decoder_falls_back_to_the_cpu_for_a_refused_jpeg_but_a_failing_device_fails(tmp_path,
                                                                                                monkeypatch):
    pre = Preprocess(36, 32)
    data = small_jpeg(tmp_path / "a.jpg", (60, 48), seed=0)
    encoded = eval_tensor_from_bytes(data, pre, keep_jpeg=True)[0]
    real = decode.decode_jpeg

    def device_decoder(failure):
        def decode(jpegs, mode, device=None):  # calls naming a device are the batch decoder's, the rest the CPU's
            if device is not None:
                raise failure
            return real(jpegs, mode=mode)
        return decode

    monkeypatch.setattr(decode, "decode_jpeg", device_decoder(RuntimeError("nvjpeg: refused")))
    (tensor,) = eval_tensors_from_jpegs([encoded], pre, torch.device("cpu"))
    assert torch.equal(tensor, eval_tensor_from_bytes(data, pre)[0])
    monkeypatch.setattr(decode, "decode_jpeg", device_decoder(torch.OutOfMemoryError("CUDA OOM")))
    with pytest.raises(torch.OutOfMemoryError):  # the batch fails (infer error rows), never a good file's row
        eval_tensors_from_jpegs([encoded], pre, torch.device("cpu"))


def test_a_batch_is_channels_last_in_the_models_dtype_with_the_images_pixels():
    images = [torch.randint(0, 256, (3, 9, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(i))
              for i in range(3)]
    x = model_handler.to_batch(images, torch.device("cpu"), torch.bfloat16)
    assert x.dtype == torch.bfloat16 and x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(x.to(torch.uint8), torch.stack(images))  # 0-255 is exact in bf16
