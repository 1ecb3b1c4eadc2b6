"""gs:// end to end against a real GCS protocol server: input bucket, checkpoint, output tables and the audit."""
import os

import pyarrow.parquet as pq
from click.testing import CliRunner

from alexlabel.cli import main
from schemas.tables import TABLES


def test_label_and_query_a_gs_bucket(gcs, sample_dir, checkpoint):
    gcs.mkdir("alexlabel-test")
    gcs.put(os.path.join(sample_dir, "bucket"), "alexlabel-test/images/", recursive=True)
    gcs.put(checkpoint, "alexlabel-test/models/model.pt")
    out = "gs://alexlabel-test/out"
    result = CliRunner().invoke(main, ["label", "--input", "gs://alexlabel-test/images/**", "--checkpoint",
                                       "gs://alexlabel-test/models/model.pt", "--output", out, "--embeddings",
                                       "--probabilities"])
    assert result.exit_code == 0, result.output
    assert "matched 16, labeled 12, errors 4" in result.output

    files = {t: gcs.glob(f"alexlabel-test/out/{t}/*/*.parquet")
             for t in ("labels", "errors", "runs", "embeddings", "probabilities")}
    rows = {}
    for table, paths in files.items():
        assert paths, table
        tables = [pq.read_table(gcs.open(p, "rb"), partitioning=None) for p in paths]
        assert all(t.schema.equals(TABLES[table], check_metadata=False) for t in tables)
        rows[table] = [r for t in tables for r in t.to_pylist()]
    assert {r["uri"] for r in rows["labels"]} | {r["uri"] for r in rows["errors"]} == {
        "gs://" + p for p in gcs.find("alexlabel-test/images")}
    assert rows["runs"][0]["matched"] == 16 and rows["runs"][0]["checkpoint"] == "gs://alexlabel-test/models/model.pt"
    assert {r["uri"] for r in rows["embeddings"]} == {r["uri"] for r in rows["probabilities"]} == \
        {r["uri"] for r in rows["labels"]}

    summary = CliRunner().invoke(main, ["query", out, "--sql", "SELECT count(*) AS n FROM labels"])
    assert summary.exit_code == 0 and "12" in summary.output

    audited = CliRunner().invoke(main, ["audit", out])
    assert audited.exit_code == 0, audited.output
    (issues,) = gcs.glob("alexlabel-test/out/issues/*/*.parquet")
    assert pq.read_table(gcs.open(issues, "rb"), partitioning=None).schema.equals(TABLES["issues"],
                                                                                check_metadata=False)
    assert f"12 images -> gs://{issues}" in audited.output


def test_a_bucket_that_cannot_be_listed_is_a_one_line_error(gcs, checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["label", "--input", "gs://no-such-bucket-here/images/**", "--checkpoint",
                                       checkpoint, "--output", str(tmp_path / "out")])
    assert result.exit_code == 1, result.output
    (line,) = result.output.strip().splitlines()
    assert line.startswith("Error: ") and "gs://no-such-bucket-here/images/**" in line
    assert not (tmp_path / "out").exists()
