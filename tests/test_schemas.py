"""The contracts: image decoding and preprocessing, checkpoint files, table schemas."""
import io
import os
import pickle
import re

import numpy as np
import pytest
import torch
from PIL import Image

from common.storage import resolve_uri
from schemas.checkpoint import FORMAT_VERSION, CheckpointError, Manifest, load_checkpoint, save_checkpoint, sibling
from schemas.images import ImageTooLarge, decode_image
from schemas.tables import ERRORS, LABELS, TABLES, bigquery_schema
from schemas.transform import Preprocess


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def test_eval_tensor_resizes_shorter_side_then_center_crops():
    pre = Preprocess(resize=36, crop=32)
    img = Image.new("RGB", (300, 200), (0, 0, 0))
    img.paste((255, 0, 0), (140, 90, 160, 110))  # a red square in the middle survives the crop
    x = pre.eval_tensor(img)
    assert x.dtype == torch.uint8 and x.shape == (3, 32, 32)
    assert x[0, 16, 16] > 200 and x[1, 16, 16] < 50 and x[0, 0, 0] < 50


def test_normalize_maps_mean_to_zero_and_runs_per_batch():
    pre = Preprocess(resize=8, crop=8, mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0))
    batch = torch.stack([torch.full((3, 8, 8), 255, dtype=torch.uint8), torch.zeros(3, 8, 8, dtype=torch.uint8)])
    out = pre.normalize(batch)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 8, 8)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 1.0]))
    assert torch.allclose(out[1, :, 0, 0], torch.tensor([-1.0, -1.0, 0.0]))


def test_preprocess_refuses_crop_larger_than_resize():
    with pytest.raises(ValueError, match="crop <= resize"):
        Preprocess(resize=32, crop=64)


def test_decode_applies_exif_orientation_and_reports_upright_size():
    img = Image.new("RGB", (60, 20), (10, 20, 30))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    decoded, size = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert size == (20, 60) and decoded.size == (20, 60) and decoded.mode == "RGB"


def test_decode_uses_draft_mode_for_large_jpegs_but_keeps_stored_size():
    data = encode(Image.new("RGB", (1600, 1200), (0, 128, 0)), "JPEG")
    decoded, size = decode_image(data, min_side=100)
    assert size == (1600, 1200)
    assert min(decoded.size) >= 100 and decoded.size[0] <= 400  # decoded at 1/4 scale or smaller


def test_decode_composites_alpha_on_white_and_reads_16_bit():
    rgba = Image.new("RGBA", (10, 10), (255, 0, 0, 0))  # fully transparent red
    decoded, _ = decode_image(encode(rgba, "PNG"))
    assert decoded.getpixel((5, 5)) == (255, 255, 255)
    deep = Image.fromarray(np.full((10, 10), 65535, dtype=np.uint16))
    decoded, _ = decode_image(encode(deep, "PNG"))
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (255, 255, 255)


def test_decode_refuses_bombs_from_the_header():
    bomb = encode(Image.new("1", (12_000, 10_000)), "PNG")  # 120 megapixels, a few KB on disk
    assert len(bomb) < 100_000
    with pytest.raises(ImageTooLarge, match="12000x10000"):
        decode_image(bomb)


def test_decode_names_unknown_formats_by_their_first_bytes():
    with pytest.raises(Exception, match="doctype"):
        decode_image(b"<!doctype html><html></html>")


def small_manifest(**kw) -> Manifest:
    return Manifest(arch="alexnet_small", class_names=["a", "b"], preprocess=Preprocess(36, 32),
                    arch_kwargs={"width": 4}, **kw)


def state_dict() -> dict:
    return {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(2)}


def test_checkpoint_round_trip(tmp_path):
    url = str(tmp_path / "ckpt" / "model.pt")
    saved = save_checkpoint(url, state_dict(), small_manifest(temperature=1.5, metrics={"val_top1": 0.9}))
    loaded_sd, manifest = load_checkpoint(url)
    assert manifest == saved and manifest.temperature == 1.5 and manifest.metrics == {"val_top1": 0.9}
    assert len(manifest.model_version) == 12 and manifest.weights_sha256.startswith(manifest.model_version)
    assert all(torch.equal(loaded_sd[k], v) for k, v in state_dict().items())
    assert os.listdir(tmp_path / "ckpt") == ["model.pt"]  # the temp file was renamed, nothing left beside it


def test_weights_hash_changes_with_the_weights(tmp_path):
    a = save_checkpoint(str(tmp_path / "a.pt"), state_dict(), small_manifest())
    changed = {**state_dict(), "b": torch.ones(2)}
    b = save_checkpoint(str(tmp_path / "b.pt"), changed, small_manifest())
    assert a.model_version != b.model_version


@pytest.mark.parametrize("url, model", [
    ("/runs/a/last.pt", "/runs/a/model.pt"),
    ("gs://bucket/runs/a/last.pt", "gs://bucket/runs/a/model.pt"),
    ("last.pt", "model.pt"),
])
def test_sibling_stays_in_the_same_folder_on_any_url(url, model):
    assert sibling(url, "model.pt") == model


def test_a_training_checkpoint_is_named_and_other_plain_dicts_still_say_import_weights(tmp_path):
    last, plain = tmp_path / "run" / "last.pt", tmp_path / "plain.pt"
    last.parent.mkdir()
    torch.save({"model": state_dict(), "optimizer": {"state": {}}, "state": "{}", "rng": []}, last)
    torch.save({"model": state_dict()}, plain)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(str(last))
    assert str(e.value) == (f"checkpoint {last} is a training checkpoint (for `alexlabel train --resume`), not an "
                            f"inference one; use {tmp_path / 'run' / 'model.pt'} beside it")
    with pytest.raises(CheckpointError, match="has no alexlabel manifest; wrap plain state dicts with"):
        load_checkpoint(str(plain))


class Payload:
    """Unpickling this would create a file: the proof that a loader executed code."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    url = tmp_path / "evil.pt"
    torch.save({"manifest": small_manifest().to_json(), "state_dict": state_dict(), "x": Payload(str(marker))}, url)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(str(url))
    assert not marker.exists()


@pytest.mark.parametrize("damage, match", [
    (lambda data: data[: len(data) // 2], "truncated or not a torch file"),
    (lambda data: b"", "truncated or not a torch file"),
])
def test_truncated_checkpoints_are_refused(tmp_path, damage, match):
    url = str(tmp_path / "model.pt")
    save_checkpoint(url, state_dict(), small_manifest())
    with open(url, "rb") as f:
        data = f.read()
    with open(url, "wb") as f:
        f.write(damage(data))
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(url)


def test_unknown_format_version_and_missing_manifest_are_refused(tmp_path):
    newer = tmp_path / "newer.pt"
    torch.save({"manifest": small_manifest(format_version=FORMAT_VERSION + 1).to_json(), "state_dict": {}}, newer)
    with pytest.raises(CheckpointError, match="format_version 2 is not supported"):
        load_checkpoint(str(newer))
    bare = tmp_path / "bare.pt"
    torch.save(state_dict(), bare)
    with pytest.raises(CheckpointError, match="no alexlabel manifest.*import-weights"):
        load_checkpoint(str(bare))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "missing.pt"))


def test_tampered_weights_are_refused(tmp_path):
    url = tmp_path / "model.pt"
    manifest = save_checkpoint(str(url), state_dict(), small_manifest())
    tampered = {**state_dict(), "b": torch.ones(2)}
    torch.save({"format_version": 1, "manifest": manifest.to_json(), "state_dict": tampered}, url)
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_checkpoint(str(url))


def test_manifest_is_plain_json():
    text = small_manifest().to_json()
    assert pickle.loads(pickle.dumps(text)) == text and '"preprocess": {"crop": 32' in text
    assert Manifest.from_json(text) == small_manifest()


# BigQuery's JSON schema form, as `bq mk --schema` and `bq load --schema` read it (a bare array of fields;
# https://cloud.google.com/bigquery/docs/schemas#specifying_a_json_schema_file) and the REST API's TableFieldSchema
# names its types and modes.
BQ_KEYS = {"name", "type", "mode", "description", "fields"}
BQ_TYPES = {"STRING", "BYTES", "INTEGER", "INT64", "FLOAT", "FLOAT64", "NUMERIC", "BIGNUMERIC", "BOOLEAN", "BOOL",
            "TIMESTAMP", "DATE", "TIME", "DATETIME", "GEOGRAPHY", "JSON", "INTERVAL", "RANGE", "RECORD", "STRUCT"}
BQ_MODES = {"NULLABLE", "REQUIRED", "REPEATED"}


def assert_bigquery_schema(fields, where: str = "schema") -> None:
    """Fail unless `fields` is a BigQuery JSON schema: a non-empty array of fields, each with a valid column name,
    a type and a mode from BigQuery's lists, and `fields` (recursively the same) exactly when it is a RECORD."""
    assert isinstance(fields, list) and fields, f"{where}: not a non-empty array of fields: {fields!r:.80}"
    for f in fields:
        assert isinstance(f, dict) and {"name", "type", "mode"} <= f.keys() <= BQ_KEYS, f"{where}: {f}"
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,299}", f["name"]), f"{where}: column name {f['name']!r}"
        assert f["type"] in BQ_TYPES and f["mode"] in BQ_MODES, f"{where}.{f['name']}: {f['type']} {f['mode']}"
        assert ("fields" in f) == (f["type"] in ("RECORD", "STRUCT")), f"{where}.{f['name']}: fields iff RECORD"
        if "fields" in f:
            assert_bigquery_schema(f["fields"], f"{where}.{f['name']}")
    names = [f["name"].lower() for f in fields]  # BigQuery column names ignore case
    assert len(set(names)) == len(names), f"{where}: duplicate column names"


def test_the_bigquery_check_takes_the_documented_form_only():
    assert_bigquery_schema([{"name": "addresses", "type": "RECORD", "mode": "REPEATED", "description": "past",
                             "fields": [{"name": "city", "type": "STRING", "mode": "NULLABLE"}]}])
    field = {"name": "uri", "type": "STRING", "mode": "REQUIRED"}
    for bad in ({"labels": [field]}, [], [{**field, "type": "RECORD"}], [{**field, "fields": [field]}],
                [{**field, "type": "VARCHAR"}], [{**field, "mode": "OPTIONAL"}], [{**field, "nullable": False}],
                [{**field, "name": "top-k"}], [field, {**field, "name": "URI"}], [{"name": "uri", "type": "STRING"}]):
        with pytest.raises(AssertionError):
            assert_bigquery_schema(bad)


@pytest.mark.parametrize("table", sorted(TABLES))
def test_bigquery_schema_of_every_table_is_the_documented_form(table):
    bq = bigquery_schema(TABLES[table])
    assert_bigquery_schema(bq, table)
    assert [f["name"] for f in bq] == TABLES[table].names


def test_bigquery_modes_follow_nullability_and_lists():
    labels = {f["name"]: f for f in bigquery_schema(LABELS)}
    assert labels["topk_labels"] == {"name": "topk_labels", "type": "STRING", "mode": "REPEATED"}
    assert labels["labeled_at"]["type"] == "TIMESTAMP" and labels["confidence"]["mode"] == "REQUIRED"
    assert {f["name"]: f for f in bigquery_schema(ERRORS)}["size_bytes"]["mode"] == "NULLABLE"


def test_eval_tensor_matches_torchvision_resize_then_center_crop():
    from torchvision import transforms

    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
    pre = Preprocess(resize=256, crop=224)
    reference = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.PILToTensor()])
    diff = (pre.eval_tensor(smooth).float() - reference(smooth).float()).abs()
    assert diff.mean() < 1.0 and diff.max() <= 8  # same geometry; sub-pixel rounding only


@pytest.mark.parametrize("size", [(1, 1), (100_000, 1), (3, 20_000)])
def test_eval_tensor_handles_tiny_and_extreme_aspect_images(size):
    x = Preprocess(resize=36, crop=32).eval_tensor(Image.new("RGB", size, (9, 99, 199)))
    assert x.shape == (3, 32, 32) and x[:, 16, 16].tolist() == [9, 99, 199]


def formats() -> dict[str, bytes]:
    """The same red-left / blue-right picture in every format and mode Pillow writes."""
    rgb = Image.new("RGB", (64, 48), (220, 20, 20))
    rgb.paste((20, 20, 220), (32, 0, 64, 48))
    gif = [rgb.convert("P"), Image.new("RGB", (64, 48), (0, 255, 0)).convert("P")]  # animated: first frame counts
    gif_bytes = io.BytesIO()
    gif[0].save(gif_bytes, "GIF", save_all=True, append_images=gif[1:])
    return {
        "jpeg": encode(rgb, "JPEG", quality=95),
        "jpeg-progressive": encode(rgb, "JPEG", quality=95, progressive=True),
        "jpeg-cmyk": encode(rgb.convert("CMYK"), "JPEG", quality=95),
        "png-palette": encode(rgb.convert("P"), "PNG"),
        "png-gray": encode(rgb.convert("L"), "PNG"),
        "gif-animated": gif_bytes.getvalue(),
        "webp": encode(rgb, "WEBP", quality=95),
        "bmp": encode(rgb, "BMP"),
        "tiff": encode(rgb, "TIFF"),
    }


@pytest.mark.parametrize("name", list(formats()))
def test_every_common_format_decodes_to_upright_rgb(name):
    img, size = decode_image(formats()[name])
    assert img.mode == "RGB" and size == (64, 48) and img.size == (64, 48)
    left, right = img.getpixel((8, 24)), img.getpixel((56, 24))
    if name == "png-gray":
        assert left[0] == left[1] == left[2] and left != right
    else:
        assert left[0] > 150 > left[2] and right[2] > 150 > right[0], (left, right)


def test_manifest_uris_resolve_one_way_for_the_trainer_and_the_query_tool(tmp_path, monkeypatch):
    """Relative uris in a manifest or truth file name the same file as the tables' absolute uris."""
    monkeypatch.chdir(tmp_path)
    assert resolve_uri("img/./b.jpg", "data/m.csv") == f"{tmp_path}/data/img/b.jpg"
    assert resolve_uri("../up/c.jpg", f"{tmp_path}/data/m.csv") == f"{tmp_path}/up/c.jpg"
    assert resolve_uri("/abs/a.jpg", "gs://bkt/m.csv") == "/abs/a.jpg"
    assert resolve_uri("gs://other/d.jpg", "data/m.csv") == "gs://other/d.jpg"
    assert resolve_uri("../e.jpg", "memory://bkt/dir/m.csv") == "memory:///bkt/e.jpg"
