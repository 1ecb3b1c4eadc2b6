"""`alexlabel audit`: each kind of issue found on outputs built to hold it, the issues table read back, the
one-line errors, and the whole chain from real images through `label --embeddings`."""
import csv
import glob
import json
import os
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from outputs import label, vector, write_output
from PIL import Image

from alexlabel.cli import main
from alexlabel.sample_data import CLASSES, near_copies, sample_image
from schemas.tables import ISSUES
from schemas.views import connect

CLASS_NAMES = ["cat", "dog", "fox"]


def audit(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", *map(str, args)])
    return result.exit_code, result.output


def labeled(uri: str, k: int, confidence: float = 0.9, sha: str | None = None, margin: float | None = None):
    """A labels row of class k (of CLASS_NAMES) with a full top-3 and its own content hash."""
    row = label(uri, CLASS_NAMES[k], confidence, margin=margin)
    others = [c for c in range(3) if c != k]
    rest = (1 - confidence) / 2
    second = confidence - row["margin"] if margin is not None else rest
    return {**row, "content_sha256": sha or uri.rjust(64, "0")[-64:], "label_index": k,
            "topk_labels": [CLASS_NAMES[c] for c in [k, *others]], "topk_indices": [k, *others],
            "topk_confidences": [confidence, second, max(1 - confidence - second, 0)]}


def clustered(rng, n: int, centre: np.ndarray, spread: float = 0.7) -> np.ndarray:
    return centre + spread * rng.standard_normal((n, len(centre)))


@pytest.fixture
def curated(tmp_path):
    """90 images in three classes with: two byte-identical files, a near-copy set of three, one far-off image and
    two rows the model is torn on; with probabilities."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 32))
    rows, vectors, probs = [], [], []
    for k in range(3):
        for i, v in enumerate(clustered(rng, 30, centres[k])):
            rows.append(labeled(f"/img/{CLASS_NAMES[k]}_{i:02d}.jpg", k))
            vectors.append(v)
            p = np.full(3, 0.05)
            p[k] = 0.9
            probs.append(p)
    rows[1]["content_sha256"] = rows[0]["content_sha256"]  # cat_01 is cat_00's bytes under another name
    for j in (11, 12):  # dog_11 and dog_12: copies of dog_10 (re-encoded: other bytes, nearly the same vector)
        vectors[30 + j] = vectors[40] + 0.01 * rng.standard_normal(32)
    vectors[70] = 40 * rng.standard_normal(32)  # fox_10: like nothing else
    for i in (50, 51):  # dog_20, dog_21: torn between dog and fox
        rows[i] = labeled(rows[i]["uri"], 1, 0.48, margin=0.02)
        probs[i] = np.array([0.04, 0.48, 0.46])
    out = write_output(str(tmp_path / "out"), rows,
                       embeddings=[vector(r, v) for r, v in zip(rows, vectors, strict=True)],
                       probabilities=[vector(r, p, "probabilities") for r, p in zip(rows, probs, strict=True)])
    return out, rows


def issues_of(out: str) -> list[dict]:
    return connect(out).sql("SELECT * FROM latest_issues ORDER BY issue, uri").to_arrow_table().to_pylist()


def by_kind(rows: list[dict], kind: str) -> dict[str, dict]:
    return {r["uri"]: r for r in rows if r["issue"] == kind}


def test_audit_finds_each_kind_of_issue(curated):
    out, rows = curated
    code, printed = audit(out)
    assert code == 0, printed
    found = issues_of(out)
    exact = by_kind(found, "exact_duplicate")
    assert set(exact) == {"/img/cat_00.jpg", "/img/cat_01.jpg"}
    assert len({r["group_id"] for r in exact.values()}) == 1
    near = by_kind(found, "near_duplicate")
    assert set(near) == {"/img/dog_10.jpg", "/img/dog_11.jpg", "/img/dog_12.jpg"}
    assert len({r["group_id"] for r in near.values()}) == 1
    assert near["/img/dog_10.jpg"]["group_id"] != exact["/img/cat_00.jpg"]["group_id"]  # one numbering per audit
    assert all(r["score"] > 0.99 and json.loads(r["details"])["size"] == 3 for r in near.values())
    outliers = by_kind(found, "outlier")
    assert set(outliers) == {"/img/fox_10.jpg"}  # far from the other foxes, by the class measure alone here
    details = json.loads(outliers["/img/fox_10.jpg"]["details"])
    assert details["by"] == ["class"] and details["class"] == "fox" and details["class_distance"] > 0.5
    assert 0.5 < outliers["/img/fox_10.jpg"]["score"] < 1
    low = by_kind(found, "low_confidence")
    assert set(low) == {"/img/dog_20.jpg", "/img/dog_21.jpg"}
    details = json.loads(low["/img/dog_20.jpg"]["details"])
    assert details["margin"] == pytest.approx(0.02, abs=1e-3) and 0.5 < details["entropy"] < 1
    assert not by_kind(found, "label_error")  # no labels given: nothing to check
    assert "exact_duplicate" in printed and "near_duplicate         3 images" in printed and "in 1 sets" in printed
    assert "note: near-duplicates and outliers by embedding only: some rows have no pixel fingerprint" in printed


def test_an_image_like_no_other_in_its_pixels_is_an_outlier_by_its_fingerprint(curated, tmp_path):
    """With pixel fingerprints (the embeddings through a fixed projection, so copies stay close in both), cat_05's
    set to zero, a flat colour's: an outlier by that measure alone, and the report says why."""
    source, rows = curated
    (path,) = glob.glob(f"{source}/embeddings/*/*.parquet")
    embeddings = pq.read_table(path).to_pylist()
    projection = np.random.default_rng(2).standard_normal((32, 105))
    for row in embeddings:
        row["fingerprint"] = np.asarray(row["embedding"], np.float32) @ projection
    flat = next(r for r in embeddings if r["uri"] == "/img/cat_05.jpg")
    flat["fingerprint"] = np.zeros(105)
    out = write_output(str(tmp_path / "out"), rows, embeddings=[{**r, "embedding": np.asarray(r["embedding"])}
                                                                 for r in embeddings])
    assert audit(out)[0] == 0
    outliers = {uri: json.loads(r["details"]) for uri, r in by_kind(issues_of(out), "outlier").items()}
    assert outliers["/img/cat_05.jpg"]["by"] == ["fingerprint"]
    assert outliers["/img/cat_05.jpg"]["fingerprint_distance"] == pytest.approx(1)  # similarity 0 to everything
    assert "class" in outliers["/img/fox_10.jpg"]["by"]
    assert set(outliers) <= {"/img/cat_05.jpg", "/img/fox_10.jpg"}
    card = report_of(out, tmp_path).split("<h3>Outliers</h3>")[1].split("/img/cat_05.jpg")[0].rsplit("<figure>")[-1]
    assert "pixels like no other image" in card


def test_images_in_classes_too_small_to_measure_are_counted_in_a_note(tmp_path):
    rng = np.random.default_rng(3)
    rows = [labeled(f"/img/{i:02d}.jpg", 0 if i < 10 else 1) for i in range(12)]  # the last 2: a class of 2
    out = write_output(str(tmp_path / "out"), rows, embeddings=[vector(r, rng.standard_normal(8)) for r in rows])
    code, printed = audit(out)
    assert code == 0, printed
    assert ("note: outliers by class: 2 images are in classes (the model's top-1) of fewer than 5 and were not "
            "measured by it; audit more images of those classes") in printed


def test_issues_table_has_its_schema_and_one_audit_per_file(curated):
    out, _ = curated
    for _ in range(2):
        assert audit(out)[0] == 0
    files = sorted(p for p, _, names in os.walk(f"{out}/issues") for _ in names)
    written = [os.path.join(p, n) for p, _, names in os.walk(f"{out}/issues") for n in names]
    assert len(written) == 2 and len(set(files)) == 1  # two audits, one partition
    assert pq.read_schema(written[0]).remove_metadata() == ISSUES
    con = connect(out)
    assert con.sql("SELECT count(DISTINCT audit_id) FROM issues").fetchall()[0][0] == 2
    assert con.sql("SELECT count(DISTINCT audit_id) FROM latest_issues").fetchall()[0][0] == 1


@pytest.mark.parametrize("manifest", ["csv", "parquet"])
def test_label_errors_found_by_confident_learning(curated, tmp_path, manifest):
    """Flipped given labels (a CSV, or the Parquet manifest `export` writes) on rows the model is sure of come back
    as label errors, with the model's label suggested; the rest do not."""
    out, rows = curated
    flipped = {rows[i]["uri"]: CLASS_NAMES[(i // 30 + 1) % 3] for i in (3, 33, 63, 65)}
    given = tmp_path / f"given.{manifest}"
    pairs = [(r["uri"], flipped.get(r["uri"], r["label"])) for r in rows]
    if manifest == "csv":
        with open(given, "w", newline="") as f:
            csv.writer(f).writerows([("uri", "label"), *pairs])
    else:
        pq.write_table(pa.table({"uri": [u for u, _ in pairs], "label": [g for _, g in pairs]}), given)
    code, printed = audit(out, "--labels", given)
    assert code == 0, printed
    errors = by_kind(issues_of(out), "label_error")
    assert set(errors) == set(flipped)
    for uri, row in errors.items():
        assert json.loads(row["details"])["given_label"] == flipped[uri]
        assert row["suggested_label"] == next(r["label"] for r in rows if r["uri"] == uri)
        assert row["score"] > 0.8
    assert "stored probabilities" in printed


def test_label_errors_from_top_k_without_probabilities(tmp_path):
    rng = np.random.default_rng(1)
    rows, vectors = [], []
    for k in range(3):
        for i in range(20):
            rows.append(labeled(f"/img/{CLASS_NAMES[k]}_{i}.jpg", k, confidence=0.95))
            vectors.append(rng.standard_normal(8))
    out = write_output(str(tmp_path / "out"), rows,
                       embeddings=[vector(r, v) for r, v in zip(rows, vectors, strict=True)])
    given = tmp_path / "given.csv"
    with open(given, "w", newline="") as f:
        csv.writer(f).writerows([("uri", "label"), *((r["uri"], "fox" if r["uri"] == "/img/cat_3.jpg" else r["label"])
                                                     for r in rows)])
    code, printed = audit(out, "--labels", given)
    assert code == 0, printed
    assert set(by_kind(issues_of(out), "label_error")) == {"/img/cat_3.jpg"}
    assert "rebuilt from the top-k" in printed


@pytest.mark.parametrize("case, expected", [
    ("no embeddings", "no embeddings to audit; label with `alexlabel label --embeddings`"),
    ("two versions", "embeddings of 2 model versions (m1, m2), which are not comparable; pick one with --model"),
    ("labels match nothing", "--labels: no labeled image matches truth"),
])
def test_one_line_errors(tmp_path, case, expected):
    rows = [labeled(f"u{i}.jpg", i % 3) for i in range(6)]
    vectors = [vector(r, np.ones(4) * i) for i, r in enumerate(rows)]
    args = []
    if case == "no embeddings":
        vectors = []
    if case == "two versions":
        again = [{**r, "model_version": "m2"} for r in rows]
        rows, vectors = rows + again, vectors + [vector(r, np.ones(4)) for r in again]
    if case == "labels match nothing":
        (tmp_path / "given.csv").write_text("uri,label\nelsewhere.jpg,cat\n")
        args = ["--labels", tmp_path / "given.csv"]
    out = write_output(str(tmp_path / "out"), rows, embeddings=vectors)
    code, printed = audit(out, *args)
    assert code == 1
    assert printed.startswith("Error: ") and expected in printed and printed.count("\n") == 1
    assert not os.path.exists(f"{out}/issues")  # nothing half-written
    if case == "two versions":
        assert audit(out, "--model", "m2")[0] == 0


def test_real_images_through_label_embeddings(checkpoint, tmp_path):
    """Real JPEGs labeled with --embeddings: a byte copy is an exact duplicate, and a re-encoded, a mirrored and a
    cropped copy are near ones, which the pixel fingerprints find where this barely trained model's features may
    not."""
    rng = np.random.default_rng(5)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(16):
        img = sample_image(rng, CLASSES[i % len(CLASSES)])
        img.save(folder / f"img_{i:02d}.jpg", quality=90)
    (folder / "copy_of_00.jpg").write_bytes((folder / "img_00.jpg").read_bytes())
    for i, kind in enumerate(("requality", "flipped", "cropped"), start=1):
        (folder / f"{kind}_of_{i:02d}.jpg").write_bytes(near_copies(Image.open(folder / f"img_{i:02d}.jpg"))[kind])
    out = tmp_path / "out"
    subprocess.run([".venv/bin/alexlabel", "label", "--input", f"{folder}/*", "--checkpoint", checkpoint, "--output",
                    str(out), "--embeddings", "--probabilities"], check=True, capture_output=True)
    assert connect(str(out)).sql("SELECT count(*) FROM vectors WHERE probabilities IS NOT NULL").fetchall()[0][0] == 20
    printed = subprocess.run([".venv/bin/alexlabel", "audit", str(out)], check=True, capture_output=True,
                             text=True).stdout
    found = issues_of(str(out))
    names = {k: {os.path.basename(u) for u in by_kind(found, k)} for k in ("exact_duplicate", "near_duplicate")}
    assert names["exact_duplicate"] == {"img_00.jpg", "copy_of_00.jpg"}
    near = by_kind(found, "near_duplicate")
    sets = {}
    for uri, r in near.items():
        sets.setdefault(r["group_id"], set()).add(os.path.basename(uri))
    assert sorted(map(sorted, sets.values())) == [["cropped_of_03.jpg", "img_03.jpg"],
                                                  ["flipped_of_02.jpg", "img_02.jpg"],
                                                  ["img_01.jpg", "requality_of_01.jpg"]]
    assert all("fingerprint" in json.loads(r["details"])["by"] for r in near.values())
    assert "20 images" in printed
    strips = report_of(str(out), tmp_path).split('class="strip"')[1:]
    assert strips and all(strip.split("</div>")[0].count('<img class="thumb" src="data:image/jpeg;base64,') >= 2
                          for strip in strips)  # every set shown as a strip of real thumbnails


def report_of(out: str, tmp_path) -> str:
    page = tmp_path / "report.html"
    result = CliRunner().invoke(main, ["report", out, "--html", str(page)])
    assert result.exit_code == 0, result.output
    return page.read_text()


def test_report_shows_the_latest_audit(curated, tmp_path):
    out, rows = curated
    assert "No audit yet" in report_of(out, tmp_path)
    empty = tmp_path / "nothing"  # an audit that finds nothing is still the latest
    write_output(str(empty), rows[2:5], embeddings=[vector(r, np.eye(3)[i]) for i, r in enumerate(rows[2:5])])
    assert audit(empty)[0] == 0 and not issues_of(str(empty))
    assert "found no issues" in report_of(str(empty), tmp_path)
    given = tmp_path / "given.csv"
    given.write_text("uri,label\n" + "".join(f"{r['uri']},{'fox' if i == 3 else r['label']}\n"
                                             for i, r in enumerate(rows)))
    assert audit(out, "--labels", given)[0] == 0
    page = report_of(out, tmp_path)
    assert page.count('class="strip"') == 2  # the exact pair and the near set
    assert "given <b>fox</b>, model says <b>cat</b>" in page and "/img/cat_03.jpg" in page
    outliers = page.split("<h3>Outliers</h3>")[1]
    assert "/img/fox_10.jpg" in outliers and "unlike the model's <b>fox</b>" in outliers  # and why


@pytest.mark.parametrize("case", ["none", "broken"])
def test_embeddings_need_a_checkpoint_with_a_projection(checkpoint, tmp_path, case):
    """A checkpoint without a PCA is refused before any work, naming `alexlabel refit` (tests/test_refit.py runs
    it), and one with a broken PCA naming the file; nothing is written."""
    from dataclasses import replace

    from schemas.checkpoint import load_checkpoint, save_checkpoint, split_state

    state_dict, manifest = load_checkpoint(checkpoint)
    weights, projection, _ = split_state(state_dict)
    if case == "broken":  # a mean that does not fit the network's penultimate layer
        weights = {**weights, "embedding.mean": projection.mean[:-1],
                   "embedding.components": projection.components[:-1]}
    bad = str(tmp_path / "bad.pt")
    save_checkpoint(bad, weights, replace(manifest, embedding={} if case == "none" else manifest.embedding))
    folder = tmp_path / "images"
    folder.mkdir()
    sample_image(np.random.default_rng(0), CLASSES[0]).save(folder / "a.jpg")
    result = subprocess.run([".venv/bin/alexlabel", "label", "--input", f"{folder}/*", "--checkpoint", bad,
                             "--output", str(tmp_path / "out"), "--embeddings"], capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    if case == "none":
        assert result.stderr.startswith("Error: --embeddings needs a checkpoint with an embedding projection")
        assert f"`alexlabel refit {bad} --fit-on FOLDER --output NEW.pt`" in result.stderr
    else:
        assert result.stderr.startswith(f"Error: checkpoint {bad}: its embedding projection reads ")
    assert not (tmp_path / "out").exists()


def test_embeddings_stay_with_their_images_when_threads_share_the_model(checkpoint):
    """The DirectRunner's worker threads share one model: each call gets its own batch's activations back."""
    import threading

    import torch

    from beam_pipeline.model_handler import load_classifier
    from trainer.models import features_and_logits

    model = load_classifier(checkpoint, "cpu", "fp32").module
    batches = [torch.rand(16, 3, 32, 32) * 255, torch.rand(8, 3, 32, 32) * 255]
    with torch.inference_mode():
        alone = [features_and_logits(model, x)[0] for x in batches]
        assert torch.allclose(features_and_logits(model, batches[0])[1], model(batches[0]))
    wrong = []

    def work(k):
        with torch.inference_mode():
            for _ in range(30):
                features = features_and_logits(model, batches[k])[0]
                wrong.append(features.shape != alone[k].shape or not torch.allclose(features, alone[k], atol=1e-4))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wrong) == 60 and not any(wrong)


def test_resume_with_embeddings_labels_again_what_has_none(checkpoint, tmp_path):
    """--skip-existing --embeddings counts an image done only once it has its embedding (or failed)."""
    from beam_pipeline.launch import run
    from beam_pipeline.options import LabelOptions

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):
        sample_image(np.random.default_rng(i), CLASSES[i]).save(folder / f"img_{i}.jpg")
    (folder / "broken.jpg").write_bytes(b"not an image")
    out = str(tmp_path / "out")

    def label(**kw):
        return run(LabelOptions(inputs=[f"{folder}/*"], checkpoint=checkpoint, output=out, skip_existing=True, **kw))

    assert (label()["labeled"], label()["skipped"]) == (4, 5)
    first = label(embeddings=True)
    assert (first["labeled"], first["errored"], first["skipped"]) == (4, 0, 1)  # the failed file stays done
    assert label(embeddings=True)["skipped"] == 5
    assert connect(out).sql("SELECT count(*) FROM vectors").fetchall()[0][0] == 4
