"""`make demo`'s own command, end to end, in a fresh process: the README's promise."""
import os
import subprocess
import sys

import duckdb

from schemas.checkpoint import load_checkpoint


def test_demo_trains_labels_and_summarizes(tmp_path):
    workdir = tmp_path / "demo"
    alexlabel = os.path.join(os.path.dirname(sys.executable), "alexlabel")
    result = subprocess.run([alexlabel, "demo", "--workdir", str(workdir)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "accuracy:" in result.stdout and "demo done" in result.stdout
    _, manifest = load_checkpoint(str(workdir / "model" / "model.pt"))
    assert manifest.metrics["val_top1"] >= 0.9
    labels = str(workdir / "labels")
    truth = str(workdir / "data" / "bucket_truth.csv")
    accuracy, = duckdb.sql(f"""SELECT avg((l.label = t.label)::INT) FROM read_parquet('{labels}/labels/*/*.parquet') l
                              JOIN (SELECT '{workdir}/data/' || uri AS uri, label FROM read_csv('{truth}')) t
                              USING (uri)""").fetchall()[0]
    assert accuracy >= 0.9
    errors, = duckdb.sql(f"SELECT count(*) FROM read_parquet('{labels}/errors/*/*.parquet')").fetchall()[0]
    assert errors == 4
    # The audit the summary suggests runs as printed: the demo labels with --embeddings
    suggested = result.stdout.rsplit("look for duplicates and outliers: ", 1)[1].split()
    audit = subprocess.run([alexlabel, *suggested[1:]], capture_output=True, text=True, timeout=300)
    assert audit.returncode == 0, audit.stderr[-3000:]
    assert f"of model version {manifest.model_version}: 120 images" in audit.stdout
