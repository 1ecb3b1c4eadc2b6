"""`alexlabel export`: labeled images back into training data the trainer reads, closing the loop."""
import csv
import os

import pyarrow.parquet as pq
import pytest
from commands import invoke, one_line_error
from outputs import label, write_images, write_output

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions
from trainer.data import list_image_folder, read_manifest


def tree(directory) -> dict[str, bytes]:
    return {os.path.relpath(os.path.join(d, f), directory): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(directory) for f in files}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    """Two images named img.jpg in different folders, both cats; a dog; a low-confidence cat; odd labels."""
    root = tmp_path_factory.mktemp("export")
    a, b, c, d, e = write_images(root, ["x/img.jpg", "y/img.jpg", "x/dog.jpg", "x/unsure.jpg", "x/odd.jpg"])
    return write_output(str(root / "out"), [label(a, "cat", 0.9), label(b, "cat", 0.8), label(c, "dog", 0.7),
                                            label(d, "cat", 0.3), label(e, "../up", 0.95)])


def test_imagefolder_copies_by_label_with_deterministic_names(out, tmp_path):
    result = invoke("export", out, "--to", "imagefolder", tmp_path / "data")
    assert result.exit_code == 0 and "exported 5 images" in result.output, result.output
    files = tree(tmp_path / "data")
    cats = sorted(f for f in files if f.startswith("cat/"))
    assert len(cats) == 3 and "cat/unsure.jpg" in cats and all(f.startswith("cat/img-") for f in cats[:2])
    assert sorted(files) == sorted([*cats, "dog/dog.jpg", ".._up/odd.jpg"])
    src = out.rsplit("/", 1)[0]
    assert files["dog/dog.jpg"] == open(f"{src}/x/dog.jpg", "rb").read()
    assert invoke("export", out, "--to", "imagefolder", tmp_path / "again").exit_code == 0
    assert tree(tmp_path / "again") == files
    classes, samples = list_image_folder(str(tmp_path / "data"))
    assert classes == [".._up", "cat", "dog"] and len(samples) == 5


def test_filters_by_decision_and_confidence(out, tmp_path):
    assert invoke("export", out, "--to", "imagefolder", tmp_path / "acc", "--decision", "accept").exit_code == 0
    assert "cat/unsure.jpg" not in tree(tmp_path / "acc") and len(tree(tmp_path / "acc")) == 4
    assert invoke("export", out, "--to", "imagefolder", tmp_path / "hi", "--min-confidence", 0.85).exit_code == 0
    assert len(tree(tmp_path / "hi")) == 2


@pytest.mark.parametrize("name", ["m.csv", "m.parquet"])
def test_manifest_is_what_the_trainer_reads(out, tmp_path, name):
    result = invoke("export", out, "--to", "manifest", tmp_path / name, "--decision", "accept")
    assert result.exit_code == 0 and "wrote 4 rows" in result.output, result.output
    rows = read_manifest(str(tmp_path / name))
    assert sorted(label for _, label in rows) == ["../up", "cat", "cat", "dog"]
    assert all(os.path.exists(uri) for uri, _ in rows)
    path = tmp_path / name
    columns = next(csv.reader(open(path))) if name.endswith(".csv") else pq.read_schema(path).names
    assert columns == ["uri", "label", "confidence", "decision", "model_version", "reviewed"]


def test_a_persons_label_wins_unusable_rows_go_and_reviewed_only_keeps_the_checked(tmp_path):
    from output_tools.reviews import ReviewLog, review_row

    a, b, c, d = write_images(tmp_path, ["a.jpg", "b.jpg", "c.jpg", "d.jpg"])
    rows = [label(a, "cat", 0.9), label(b, "cat", 0.3), label(c, "dog", 0.2), label(d, "dog", 0.95)]
    out = write_output(str(tmp_path / "out"), rows)
    log = ReviewLog(out, "s1")
    log.add(review_row(rows[1], "correct", "fox", "ana", "s1"))    # a review row: a person's label
    log.add(review_row(rows[2], "unusable", None, "ana", "s1"))    # gone from the training data
    log.add(review_row(rows[3], "correct", "wolf", "ana", "s1"))
    log.undo()                                                     # withdrawn: the model's label stands
    log.close()
    assert invoke("export", out, "--to", "manifest", tmp_path / "all.csv", "--decision", "accept").exit_code == 0
    exported = list(csv.DictReader(open(tmp_path / "all.csv")))
    assert [(os.path.basename(r["uri"]), r["label"], r["reviewed"]) for r in exported] == [
        ("a.jpg", "cat", "False"), ("b.jpg", "fox", "True"), ("d.jpg", "dog", "False")]  # b passes as checked
    assert invoke("export", out, "--to", "manifest", tmp_path / "checked.csv", "--reviewed-only").exit_code == 0
    assert [r["label"] for r in csv.DictReader(open(tmp_path / "checked.csv"))] == ["fox"]
    assert sorted(label for _, label in read_manifest(str(tmp_path / "checked.csv"))) == ["fox"]


def test_ambiguous_or_impossible_exports_are_one_line_errors(out, tmp_path):
    two = write_output(str(tmp_path / "two"), [label("/x/a.jpg", "cat", 0.9, model="m1"),
                                               label("/x/a.jpg", "dog", 0.9, model="m2", run="r2")])
    for args, message in [
        ((two, "--to", "manifest", tmp_path / "m.csv"), "2 model versions (m1, m2); pick one with --model"),
        ((out, "--to", "manifest", tmp_path / "m.txt"), "must end in .csv or .parquet"),
        ((out, "--to", "manifest", tmp_path / "m.csv", "--min-confidence", 0.99), "pass the filters --min-confidence"),
    ]:
        result = invoke("export", *args)
        assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output, result.output
    assert invoke("export", two, "--to", "manifest", tmp_path / "m2.csv", "--model", "m2").exit_code == 0
    assert open(tmp_path / "m2.csv").read().splitlines()[1] == "/x/a.jpg,dog,0.8999999761581421,accept,m2,False"


def test_destination_of_the_wrong_kind_is_refused_before_any_work(tmp_path):
    (tmp_path / "dir.csv").mkdir()
    (tmp_path / "file").write_text("")
    missing = tmp_path / "missing"  # the destination is checked before the output is opened
    assert one_line_error(invoke("export", missing, "--to", "manifest", tmp_path / "dir.csv")) == (
        f"Error: --to manifest {tmp_path}/dir.csv is a directory; give the path of the file to write")
    assert one_line_error(invoke("export", missing, "--to", "imagefolder", tmp_path / "file")) == (
        f"Error: --to imagefolder {tmp_path}/file is a file; give the folder to copy the images into")
    assert not list((tmp_path / "dir.csv").iterdir()) and (tmp_path / "file").read_text() == ""


def test_images_that_vanished_are_reported_after_the_rest_is_copied(tmp_path):
    (kept,) = write_images(tmp_path, ["kept.jpg"])
    out = write_output(str(tmp_path / "out"), [label(kept, "cat", 0.9), label(str(tmp_path / "gone.jpg"), "cat", 0.9)])
    result = invoke("export", out, "--to", "imagefolder", tmp_path / "data")
    assert result.exit_code == 1 and result.output.splitlines() == [
        f"exported 1 images to {tmp_path / 'data'}",
        f"Error: 1 images could not be copied, e.g. {tmp_path / 'gone.jpg'} (FileNotFoundError: "
        f"[Errno 2] No such file or directory: '{tmp_path / 'gone.jpg'}')"]
    assert list(tree(tmp_path / "data")) == ["cat/kept.jpg"]


def test_train_label_review_export_loop_on_real_pipeline_output(checkpoint, sample_dir, tmp_path):
    """A real labeled bucket -> review queue -> accepted rows as an ImageFolder and a manifest for the trainer."""
    out = str(tmp_path / "labels")
    run(LabelOptions(inputs=[f"{sample_dir}/bucket/*"], checkpoint=checkpoint, output=out, precision="fp32",
                     accept_threshold=0.0))
    assert invoke("query", out, "--review", 3).exit_code == 0
    assert invoke("export", out, "--to", "imagefolder", tmp_path / "retrain" / "train").exit_code == 0
    assert invoke("export", out, "--to", "manifest", tmp_path / "retrain.parquet").exit_code == 0
    _, samples = list_image_folder(str(tmp_path / "retrain" / "train"))
    assert len(samples) == len(read_manifest(str(tmp_path / "retrain.parquet"), decision="accept")) == 12


def test_export_from_and_to_a_bucket(gcs, tmp_path):
    (image,) = write_images(tmp_path, ["a.jpg"])
    gcs.mkdir("alexlabel-export")
    gcs.put(image, "alexlabel-export/imgs/a.jpg")
    out = write_output("gs://alexlabel-export/out", [label("gs://alexlabel-export/imgs/a.jpg", "cat", 0.9)])
    assert invoke("export", out, "--to", "imagefolder", "gs://alexlabel-export/data").exit_code == 0
    assert gcs.cat("alexlabel-export/data/cat/a.jpg") == open(image, "rb").read()
    assert invoke("export", out, "--to", "manifest", "gs://alexlabel-export/m.parquet").exit_code == 0
    assert read_manifest("gs://alexlabel-export/m.parquet") == [("gs://alexlabel-export/imgs/a.jpg", "cat")]
