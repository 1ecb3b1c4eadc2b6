"""What `--input` and `--input-list` name: lists read as their kind says (a CSV or Parquet file by its uri
column, a text file by its lines), and one file is one uri however it is named."""
import glob
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from commands import invoke, one_line_error

from beam_pipeline.launch import run
from beam_pipeline.options import LabelOptions


def uris_of(out: Path, table: str) -> list[str]:
    return pq.read_table(glob.glob(f"{out}/{table}/*/*.parquet"), partitioning=None).column("uri").to_pylist()


def test_the_manifest_export_writes_is_a_list_of_its_uris(sample_dir, checkpoint, tmp_path):
    """The CSV that `alexlabel export --to manifest` writes: read by its uri column, so its header is no input,
    and a quoted uri holding a comma is one uri."""
    images = tmp_path / "images"
    images.mkdir()
    for name in ("img_00000.jpg", "img_00001.jpg"):
        shutil.copy(f"{sample_dir}/bucket/{name}", images / name)
    shutil.copy(f"{sample_dir}/bucket/img_00002.jpg", images / "a, b.jpg")
    run(LabelOptions(inputs=[f"{images}/*"], checkpoint=checkpoint, output=str(tmp_path / "first")))
    manifest = tmp_path / "manifest.csv"
    assert invoke("export", tmp_path / "first", "--to", "manifest", manifest).exit_code == 0
    assert manifest.read_text().startswith("uri,label,confidence,decision,model_version")

    out = tmp_path / "out"
    row = run(LabelOptions(inputs=[], input_lists=[str(manifest)], checkpoint=checkpoint, output=str(out)))
    assert (row["matched"], row["labeled"], row["errored"]) == (3, 3, 0)
    assert sorted(uris_of(out, "labels")) == sorted(str(p) for p in images.iterdir())


def test_a_text_list_skips_blank_lines_and_comments(sample_dir, checkpoint, tmp_path):
    bucket = f"{sample_dir}/bucket"
    listing = tmp_path / "uris.txt"
    listing.write_text(f"# images to label\n\n{bucket}/img_00000.jpg\n   # an indented comment\n  \n"
                       f"{bucket}/img_00001.jpg\r\n")
    out = tmp_path / "out"
    row = run(LabelOptions(inputs=[], input_lists=[str(listing)], checkpoint=checkpoint, output=str(out)))
    assert (row["matched"], row["labeled"], row["errored"]) == (2, 2, 0)
    assert sorted(uris_of(out, "labels")) == [f"{bucket}/img_00000.jpg", f"{bucket}/img_00001.jpg"]


@pytest.mark.parametrize("name, write, columns", [
    ("paths.csv", lambda p: p.write_text("path,label\n/data/a.jpg,cat\n"), "path, label"),
    ("uris.csv", lambda p: p.write_text("/data/a.jpg\n/data/b.jpg\n"), "/data/a.jpg"),  # a header-less CSV
    ("paths.parquet", lambda p: pq.write_table(pa.table({"path": ["/data/a.jpg"]}), p), "path"),
])
def test_a_table_list_without_a_uri_column_is_refused_in_one_line(checkpoint, tmp_path, name, write, columns):
    listing = tmp_path / name
    write(listing)
    line = one_line_error(invoke("label", "--input-list", listing, "--checkpoint", checkpoint,
                                 "--output", tmp_path / "out"))
    assert line == (f"Error: --input-list {listing} has no uri column (its columns: {columns}); give the column of "
                    "URIs the name uri, or list one URI a line in a .txt file")
    assert not (tmp_path / "out").exists()


def test_a_file_named_by_a_relative_pattern_and_a_relative_list_line_is_one_uri(sample_dir, checkpoint, tmp_path,
                                                                                 monkeypatch):
    """`label --input 'big/*.jpg' --input-list list.txt` run from the folder both are relative to."""
    big = tmp_path / "big"
    big.mkdir()
    for name in ("img_00000.jpg", "img_00001.jpg", "img_00002.jpg"):
        shutil.copy(f"{sample_dir}/bucket/{name}", big / name)
    (tmp_path / "list.txt").write_text("big/img_00000.jpg\n./big/img_00001.jpg\n")
    monkeypatch.chdir(tmp_path)
    args = ("label", "--input", "big/*.jpg", "--input-list", "list.txt", "--checkpoint", checkpoint, "--output", "out")
    first = invoke(*args)
    assert "matched 3, labeled 3, errors 0, skipped 0" in first.output, first.output
    here = Path.cwd()
    assert sorted(uris_of(here / "out", "labels")) == [f"{here}/big/img_0000{i}.jpg" for i in range(3)]
    again = invoke(*args, "--skip-existing")
    assert "matched 3, labeled 0, errors 0, skipped 3" in again.output, again.output
