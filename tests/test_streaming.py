"""Streaming: the unbounded chain under TestStream, model hot-swap, notifications, and local --watch."""
import glob
import os
import shutil

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
import torch
from apache_beam.io.gcp.pubsub import PubsubMessage
from apache_beam.ml.inference.base import ModelMetadata
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as _TestStream  # not a pytest class
from apache_beam.transforms import trigger, window
from apache_beam.transforms.window import TimestampedValue

from beam_pipeline.launch import watch
from beam_pipeline.options import LabelOptions, UsageError
from beam_pipeline.pipeline import label_uris
from beam_pipeline.streaming import WriteWindowedTable, matches_any, notification_uri
from schemas.checkpoint import load_checkpoint, save_checkpoint


def rows(out: str, table: str) -> list[dict]:
    files = sorted(glob.glob(f"{out}/{table}/*/*.parquet"))
    return [r for f in files for r in pq.read_table(f, partitioning=None).to_pylist()], files


def test_unbounded_chain_writes_one_file_set_per_window(sample_dir, checkpoint, tmp_path):
    bucket = os.path.join(sample_dir, "bucket")
    first = [f"{bucket}/img_0000{i}.jpg" for i in range(3)] + [f"{bucket}/broken_empty.jpg"]
    second = [f"{bucket}/img_0001{i}.jpg" for i in range(2)]
    stream = (_TestStream()
              .advance_watermark_to(0)
              .add_elements([TimestampedValue(u, 5) for u in first])
              .advance_watermark_to(60)
              .add_elements([TimestampedValue(u, 70) for u in second])
              .advance_watermark_to_infinity())
    out = str(tmp_path / "out")
    opts = LabelOptions(inputs=[bucket], checkpoint=checkpoint, output=out, streaming=True, run_id="stream-test")
    _, manifest = load_checkpoint(checkpoint)
    options = PipelineOptions([], runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        uris = p | stream | beam.WindowInto(window.FixedWindows(60))
        label_uris(uris, opts, manifest, lambda table: WriteWindowedTable(out, table, opts.run_id))
    labels, label_files = rows(out, "labels")
    errors, _ = rows(out, "errors")
    assert sorted(r["uri"] for r in labels) == sorted(first[:3] + second)
    assert [r["uri"] for r in errors] == [first[3]]
    assert {r["model_version"] for r in labels} == {manifest.model_version}
    names = sorted(os.path.basename(f) for f in label_files)
    assert len(names) == 2 and all(n.startswith("stream-test-1970-01-01T00:0") for n in names)  # one per window
    assert all(f"/model={manifest.model_version}/" in f for f in label_files)


def test_model_hot_swap_through_the_side_input(sample_dir, checkpoint, tmp_path):
    """Beam's own pattern (base_test.test_run_inference_side_input_in_batch): a windowed ModelMetadata
    side input; each row must carry the model version that labeled it."""
    state_dict, manifest = load_checkpoint(checkpoint)
    swapped = str(tmp_path / "v2.pt")
    v2 = save_checkpoint(swapped, {k: v + 0.01 if v.is_floating_point() else v for k, v in state_dict.items()},
                         manifest)
    bucket = os.path.join(sample_dir, "bucket")
    images = [(f"{bucket}/img_0000{i}.jpg", t) for i, t in enumerate((1, 3, 12, 15))]
    broken = [(f"{bucket}/broken_empty.jpg", 2), (f"{bucket}/broken_html.jpg", 14)]  # before and after the swap
    opts = LabelOptions(inputs=[bucket], checkpoint=checkpoint, output=str(tmp_path), run_id="swap")
    with beam.Pipeline(runner="FnApiRunner") as p:
        updates = (p
                   | "Updates" >> beam.Create([(1, ModelMetadata(model_id="", model_name="")),  # "" = the default
                                             (10, ModelMetadata(model_id=swapped, model_name="v2"))])
                   | "StampUpdates" >> beam.Map(lambda x: TimestampedValue(x[1], x[0]))
                   | "WindowUpdates" >> beam.WindowInto(window.FixedWindows(10),
                                                        accumulation_mode=trigger.AccumulationMode.DISCARDING)
                   | "KeyUpdates" >> beam.Map(lambda m: ("k", m))
                   | "GroupUpdates" >> beam.GroupByKey()
                   | "Latest" >> beam.FlatMap(lambda kv: kv[1]))
        uris = (p
                | "Uris" >> beam.Create(images + broken)
                | "StampUris" >> beam.Map(lambda x: TimestampedValue(x[0], x[1]))
                | "WindowUris" >> beam.WindowInto(window.FixedWindows(10))
                | "KeyUris" >> beam.Map(lambda u: ("k", u))
                | "GroupUris" >> beam.GroupByKey()
                | "Each" >> beam.FlatMap(lambda kv: kv[1]))
        label_uris(uris, opts, manifest, lambda table: WriteWindowedTable(str(tmp_path), table, opts.run_id),
                   model_updates=updates)
    labels, files = rows(str(tmp_path), "labels")
    assert {r["uri"]: r["model_version"] for r in labels} == {
        images[0][0]: manifest.model_version, images[1][0]: manifest.model_version,
        images[2][0]: v2.model_version, images[3][0]: v2.model_version}
    assert {os.path.basename(os.path.dirname(f)) for f in files} == {f"model={manifest.model_version}",
                                                                    f"model={v2.model_version}"}
    # Errors too are stamped, and partitioned, under the model that was live when the file came.
    errors, error_files = rows(str(tmp_path), "errors")
    assert {r["uri"]: (r["stage"], r["model_version"]) for r in errors} == {
        broken[0][0]: ("decode", manifest.model_version), broken[1][0]: ("decode", v2.model_version)}
    assert {os.path.basename(os.path.dirname(f)) for f in error_files} == {f"model={manifest.model_version}",
                                                                          f"model={v2.model_version}"}


def test_notifications_become_uris_only_for_new_objects():
    finalize = PubsubMessage(b"{}", {"eventType": "OBJECT_FINALIZE", "bucketId": "bkt", "objectId": "a/b/c.jpg",
                                     "objectGeneration": "17"})
    delete = PubsubMessage(b"{}", {"eventType": "OBJECT_DELETE", "bucketId": "bkt", "objectId": "a/b/c.jpg"})
    assert notification_uri(finalize) == ("gs://bkt/a/b/c.jpg", "17")
    assert notification_uri(delete) is None
    assert matches_any("gs://bkt/a/b/c.jpg", ("gs://bkt/a/**",))
    assert not matches_any("gs://bkt/a/b/c.jpg", ("gs://bkt/a/*.jpg",))
    assert matches_any("gs://bkt/a/c.jpg", ("gs://bkt/a/*.jpg", "gs://other/**"))
    assert matches_any("gs://anything/x.png", ())


def test_watch_labels_each_new_file_exactly_once(sample_dir, checkpoint, tmp_path):
    source, folder, out = os.path.join(sample_dir, "bucket"), tmp_path / "incoming", str(tmp_path / "out")
    folder.mkdir()
    arrivals = [["img_00000.jpg", "img_00001.jpg"], [], ["img_00002.jpg", "broken_html.jpg"]]

    def arrive(batch):
        for name in batch:
            shutil.copy(os.path.join(source, name), folder / name)

    arrive(arrivals.pop(0))
    opts = LabelOptions(inputs=[str(folder / "*")], checkpoint=checkpoint, output=out)
    runs = watch(opts, rounds=4, on_round=lambda row: arrivals and arrive(arrivals.pop(0)))
    # Round 2 found nothing new and started no job; rounds 1 and 3 labeled what had just arrived.
    assert [(r["labeled"], r["errored"], r["skipped"]) for r in runs] == [(2, 0, 0), (1, 1, 2)]
    labels, _ = rows(out, "labels")
    assert sorted(os.path.basename(r["uri"]) for r in labels) == ["img_00000.jpg", "img_00001.jpg", "img_00002.jpg"]


@pytest.mark.parametrize("change, message", [
    ({"streaming": True}, "use --watch SECONDS"),
    ({"watch_model": "gs://b/models/*.pt"}, "add --streaming"),
    ({"streaming": True, "runner": "DataflowRunner", "skip_existing": True}, "for batch runs"),
])
def test_streaming_option_mistakes_are_one_line_errors(change, message):
    with pytest.raises(UsageError, match=message):
        LabelOptions(inputs=["gs://b/in/**"], checkpoint="gs://b/m.pt", output="gs://b/out", project="p",
                     region="r", temp_location="gs://b/tmp", **change).validate()


def test_a_swapped_model_must_expect_the_same_preprocessing(checkpoint, tmp_path):
    from dataclasses import replace

    from beam_pipeline.model_handler import AlexNetModelHandler
    from schemas.checkpoint import CheckpointError

    state_dict, manifest = load_checkpoint(checkpoint)
    other = str(tmp_path / "other.pt")
    save_checkpoint(other, state_dict, replace(manifest, preprocess=replace(manifest.preprocess, resize=64)))
    handler = AlexNetModelHandler(checkpoint, preprocess=manifest.preprocess)
    assert handler.load_model().manifest.model_version == manifest.model_version
    handler.update_model_path(other)
    with pytest.raises(CheckpointError, match="swap only models trained with the same"):
        handler.load_model()
    assert torch.is_tensor(state_dict[next(iter(state_dict))])

