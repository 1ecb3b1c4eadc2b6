"""`alexlabel refit`: a checkpoint gets its embedding projection and int8 ranges fitted anew on a folder of images,
into a new checkpoint (a new model version). A checkpoint without them is refused by `label --embeddings` and
`label --precision int8` with a one-line error naming this command, and the command it names works."""
import os
import shlex
from dataclasses import replace

import pyarrow.parquet as pq
import torch

from beam_pipeline.model_handler import load_classifier
from common.storage import IMAGE_EXTENSIONS
from schemas.checkpoint import EMBEDDING_KEYS, INT8_KEY, load_checkpoint, save_checkpoint, split_state, weights_sha256
from tests.commands import invoke, one_line_error


def bare(checkpoint: str, path: str) -> str:
    """The checkpoint as one written before projections and int8 ranges were fitted: the network alone."""
    state_dict, manifest = load_checkpoint(checkpoint)
    network = {k: v for k, v in state_dict.items() if k not in (*EMBEDDING_KEYS, INT8_KEY)}
    save_checkpoint(path, network, replace(manifest, embedding={}, int8={}))
    return path


def rows(out: str, table: str) -> int:
    return sum(pq.read_metadata(os.path.join(d, f)).num_rows for d, _, files in os.walk(f"{out}/{table}")
               for f in files)


def test_the_fix_the_errors_name_works(checkpoint, sample_dir, tmp_path):
    old = bare(checkpoint, str(tmp_path / "old model.pt"))  # a space: the command in the errors quotes it
    before = open(old, "rb").read()
    bucket = os.path.join(sample_dir, "bucket")  # 12 images and 4 broken files
    refused = {flag: one_line_error(invoke("label", "--input", f"{bucket}/**", "--checkpoint", old, "--output",
                                           tmp_path / "refused", *flag.split()))
               for flag in ("--embeddings", "--precision int8")}
    fixes = {line.split("`")[1] for line in refused.values()}
    assert fixes == {f"alexlabel refit '{old}' --fit-on FOLDER --output NEW.pt"}
    new = str(tmp_path / "new.pt")
    result = invoke(*shlex.split(fixes.pop().replace("FOLDER", bucket).replace("NEW.pt", new))[1:])
    assert result.exit_code == 0, result.output

    (old_state, old_manifest), (new_state, manifest) = load_checkpoint(old), load_checkpoint(new)
    assert result.output.strip().endswith(f"int8 ranges on 12, model_version {manifest.model_version} (was "
                                          f"{old_manifest.model_version})")
    assert manifest.model_version != old_manifest.model_version
    assert [r | {"at": ""} for r in manifest.provenance["refits"]] == [
        {"checkpoint": old, "model_version": old_manifest.model_version, "at": ""}]
    assert weights_sha256(split_state(new_state)[0]) == weights_sha256(old_state)  # the same network
    assert (manifest.class_names, manifest.temperature, manifest.preprocess) == (
        old_manifest.class_names, old_manifest.temperature, old_manifest.preprocess)
    assert manifest.embedding["fitted_on"] == manifest.int8["fitted_on"] == 12
    assert manifest.embedding["source"] == manifest.int8["source"] == bucket
    assert open(old, "rb").read() == before  # the old checkpoint stays as it was

    out = str(tmp_path / "out")
    labeled = invoke("label", "--input", f"{bucket}/**", "--checkpoint", new, "--output", out, "--embeddings")
    assert labeled.exit_code == 0, labeled.output
    assert rows(out, "labels") == rows(out, "embeddings") == 12
    assert load_classifier(new, "cpu", "int8").dtype == torch.uint8  # the int8 network builds from its ranges


def test_refit_replaces_what_a_checkpoint_had(checkpoint, sample_dir, tmp_path):
    own = load_checkpoint(checkpoint)[1]
    assert own.embedding["source"] == "training set"
    folder = sample_dir  # train/, val/ and bucket/: more images than the projection has dimensions
    kept = invoke("refit", checkpoint, "--fit-on", folder, "--output", tmp_path / "same-dim.pt")
    assert kept.exit_code == 0, kept.output
    refitted = load_checkpoint(str(tmp_path / "same-dim.pt"))[1].embedding
    assert refitted["dim"] == own.embedding["dim"] < refitted["fitted_on"] - 1  # its own dim, not the default
    result = invoke("refit", checkpoint, "--fit-on", folder, "--output", tmp_path / "four.pt", "--embedding-dim", 4)
    assert result.exit_code == 0, result.output
    _, projection, ranges = split_state(load_checkpoint(str(tmp_path / "four.pt"))[0])
    manifest = load_checkpoint(str(tmp_path / "four.pt"))[1]
    assert manifest.embedding["dim"] == 4 == projection.components.shape[1] and ranges is not None
    assert manifest.embedding["source"] == manifest.int8["source"] == folder
    again = invoke("refit", tmp_path / "four.pt", "--fit-on", os.path.join(folder, "val"), "--output",
                   tmp_path / "again.pt")
    assert again.exit_code == 0, again.output
    chain = load_checkpoint(str(tmp_path / "again.pt"))[1].provenance["refits"]
    assert [r["model_version"] for r in chain] == [own.model_version, manifest.model_version]  # a refit's refit
    assert load_checkpoint(str(tmp_path / "again.pt"))[1].embedding["dim"] == 4
    same = invoke("refit", tmp_path / "four.pt", "--fit-on", folder, "--output", tmp_path / "same.pt",
                  "--embedding-dim", 4)
    assert same.exit_code == 0, same.output
    assert same.output.strip().endswith(f"model_version {manifest.model_version} (unchanged: the same fit as before)")


def test_refit_refuses_in_one_line(checkpoint, tmp_path):
    (tmp_path / "empty").mkdir()
    assert one_line_error(invoke("refit", checkpoint, "--fit-on", tmp_path / "empty", "--output", tmp_path / "a.pt")
                          ) == (f"Error: --fit-on {tmp_path}/empty holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                                "give a folder of images like those you will label")
    itself = os.path.join(os.path.dirname(checkpoint), ".", "model.pt")
    assert one_line_error(invoke("refit", checkpoint, "--fit-on", tmp_path, "--output", itself)) == (
        f"Error: --output {itself} is the checkpoint itself; write the refitted one to a new file (its model version "
        f"usually changes, and the rows labeled with {checkpoint} name the old one)")
    assert one_line_error(invoke("refit", checkpoint, "--fit-on", tmp_path, "--output", tmp_path)) == (
        f"Error: --output {tmp_path} is a directory; give the path of the file to write")
    assert not (tmp_path / "a.pt").exists()
