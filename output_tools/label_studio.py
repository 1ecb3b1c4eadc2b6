"""Label Studio both ways: `alexlabel export OUT --to label-studio tasks.json` and `alexlabel import-reviews OUT
--from label-studio EXPORT.json`.

Out: one task per latest labels row of one model version, the model's top-1 label as a prediction (so
Label Studio preselects it and can sort by its score), and beside tasks.json the labeling config tasks.xml
(an Image and single Choices over the checkpoint's classes). Each task's data carries our `uri` and
`model_version`, the keys that bring the decisions back.

Where Label Studio finds the image (`data.image`):
    http(s)://...        as is
    gs://, s3://, ...    as is: Label Studio serves them through a cloud storage connected to the project
    a local path         /data/local-files/?d=<path relative to --image-root>: Label Studio's local-files
                         serving, with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<that root>,
                         LOCAL_FILES_SERVING_ENABLED=true, and a Local files storage on the project (Label
                         Studio serves a file only under such a storage's path). A local path without
                         --image-root, or outside it, is refused: Label Studio could not show it.

Back: Label Studio's JSON export (a list of tasks, each with `data` and `annotations`) becomes reviews rows,
one per annotation, in one session: confirm when the chosen label is the model's label in OUT's latest
labels row for that uri and version, correct otherwise; reviewer = the annotator (email, else id) and
reviewed_at = when the annotation was last updated. Cancelled annotations and ones without a choice are
skipped; tasks of images OUT has not labeled are counted, not written.
"""
import json
import posixpath
import urllib.parse
from datetime import UTC, datetime
from xml.sax.saxutils import escape

import fsspec
import pyarrow as pa

from common.errors import UserError, first_line
from common.ids import new_id
from common.storage import atomic_write_bytes, canonical_uri, check_output_file, read_bytes
from output_tools import query
from output_tools.export import nothing_to_export
from output_tools.reviews import ReviewLog, review_row
from schemas.views import latest_checkpoint, one_version

FROM_NAME, TO_NAME = "label", "image"  # the control and object tag names of the config: predictions name them


class LabelStudioError(UserError):
    """An export that would be ambiguous, empty or unviewable; a file that is not a Label Studio JSON export of
    this output's tasks."""


def config_path(tasks_path: str) -> str:
    """tasks.json -> tasks.xml, beside it."""
    return posixpath.splitext(tasks_path)[0] + ".xml"


def labeling_config(class_names: list[str]) -> str:
    """The Label Studio labeling config: the image and one choice per class (names XML-escaped)."""
    choices = "".join(f'    <Choice value="{escape(name, {chr(34): "&quot;"})}"/>\n' for name in class_names)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <Choices name="{FROM_NAME}" toName="{TO_NAME}" choice="single">\n{choices}  </Choices>\n</View>\n')


def image_url(uri: str, image_root: str | None) -> str:
    """Where Label Studio loads the image from (see the module docstring)."""
    if "://" in uri:
        return uri
    if image_root is None:
        raise LabelStudioError(f"{uri} is a local file, which Label Studio serves only from its local-files "
                               "document root: pass --image-root DIR (its LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT)")
    root = canonical_uri(image_root).rstrip("/") + "/"
    if not uri.startswith(root):
        raise LabelStudioError(f"{uri} is not under --image-root {image_root}; Label Studio serves local files only "
                               "from below its document root: pass a folder that holds every image")
    return "/data/local-files/?d=" + urllib.parse.quote(uri[len(root):])


def class_list(con, version: str) -> tuple[list[str], str]:
    """The class names of model version `version` and where they came from: the checkpoint the runs table names
    for it, else (checkpoint gone or replaced) every label in the rows' top-k, which may miss classes."""
    why = f"no run of model version {version} names its checkpoint"
    if checkpoint := latest_checkpoint(con, version):
        fs, path = fsspec.core.url_to_fs(checkpoint)
        if fs.exists(path):
            from schemas.checkpoint import load_checkpoint  # torch: only for this

            manifest = load_checkpoint(checkpoint)[1]
            if manifest.model_version == version:
                return list(manifest.class_names), f"the classes of checkpoint {checkpoint}"
            why = f"checkpoint {checkpoint} now holds model version {manifest.model_version}"
        else:
            why = f"checkpoint {checkpoint} is gone"
    labels = [name for (name,) in con.execute(
        "SELECT DISTINCT unnest(topk_labels) AS name FROM analyzed WHERE model_version = $1 ORDER BY 1",
        [version]).fetchall()]
    return labels, f"{len(labels)} classes from the labels' top-k only ({why}; classes never in a top-k are missing)"


def select_rows(output: str, model: str | None, decision: str | None, min_confidence: float | None) -> list[tuple]:
    """(uri, label, confidence, model_version) of the latest rows of one model version, ordered by uri: the
    model's own labels (its predictions), whatever people decided since."""
    con = query.connect(output, model)
    one_version(con, output)
    rows = con.execute("""SELECT uri, label, confidence, model_version FROM analyzed
                          WHERE ($1 IS NULL OR decision = $1) AND confidence >= coalesce($2, 0) ORDER BY uri""",
                       [decision, min_confidence]).fetchall()
    if not rows:
        raise nothing_to_export(output, decision, min_confidence)
    return rows


def export_tasks(output: str, dest: str, model: str | None = None, decision: str | None = None,
                 min_confidence: float | None = None, image_root: str | None = None) -> tuple[int, str, str]:
    """Write Label Studio tasks to `dest` (.json) and the labeling config beside it (.xml).

    Returns (tasks written, config path, where the class list came from)."""
    if not dest.lower().endswith(".json"):
        raise LabelStudioError(f"--to label-studio {dest} must end in .json (the labeling config goes beside it, "
                               ".xml)")
    xml_path = config_path(dest)
    check_output_file(dest, "--to label-studio")
    check_output_file(xml_path, "the labeling config")
    rows = select_rows(output, model, decision, min_confidence)
    tasks = [{"data": {"image": image_url(uri, image_root), "uri": uri, "model_version": version},
              "predictions": [{"model_version": version, "score": round(float(confidence), 6),
                               "result": [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "choices",
                                           "value": {"choices": [label]}}]}]}
             for uri, label, confidence, version in rows]
    version = rows[0][3]
    names, source = class_list(query.connect(output, version), version)
    atomic_write_bytes(xml_path, labeling_config(names).encode())
    atomic_write_bytes(dest, (json.dumps(tasks, indent=1, ensure_ascii=False) + "\n").encode())
    return len(tasks), xml_path, source


def reviewer_of(annotation: dict) -> str:
    """The annotator as Label Studio names them: an email when the export carries the user object, else the id."""
    who = annotation.get("completed_by")
    if isinstance(who, dict):
        who = who.get("email") or who.get("id")
    return "unknown" if who in (None, "") else str(who)


def chosen_label(annotation: dict) -> str | None:
    """The annotation's choice in our `label` control (any choices result if none is named so); None if none."""
    results = [r for r in annotation.get("result") or [] if isinstance(r, dict) and r.get("type") == "choices"]
    for result in sorted(results, key=lambda r: r.get("from_name") != FROM_NAME):
        choices = (result.get("value") or {}).get("choices") or []
        if choices:
            return str(choices[0])
    return None


def annotated_at(annotation: dict) -> datetime | None:
    for key in ("updated_at", "created_at"):
        try:
            when = datetime.fromisoformat(str(annotation[key]))
        except (KeyError, ValueError):
            continue
        return when if when.tzinfo else when.replace(tzinfo=UTC)
    return None


def read_export(path: str) -> list[dict]:
    """Label Studio's JSON export: a list of tasks, each with a `data` object and an `annotations` list."""
    try:
        tasks = json.loads(read_bytes(path))
    except FileNotFoundError:
        raise LabelStudioError(f"{path} does not exist; export the project from Label Studio as JSON") from None
    except OSError as e:  # a folder, no permission
        raise LabelStudioError(f"cannot read {path} ({first_line(e)}); pass the JSON file Label Studio exported"
                               ) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise LabelStudioError(f"{path} is not JSON ({first_line(e)}); export the project from Label Studio as "
                               "JSON") from None
    if isinstance(tasks, dict) and isinstance(tasks.get("data"), dict):
        tasks = [tasks]  # one task, as Label Studio shows it
    bad = next((i for i, t in enumerate(tasks) if not isinstance(t, dict) or not isinstance(t.get("data"), dict)
                or not isinstance(t.get("annotations"), list)), None) if isinstance(tasks, list) else -1
    if bad is not None:
        what = "is not a list of tasks" if bad < 0 else f"has a task (#{bad + 1}) without data and annotations"
        raise LabelStudioError(f"{path} {what}: not a Label Studio JSON export; export the project as JSON "
                               "(not JSON_MIN or CSV), with its annotations")
    if not tasks:
        raise LabelStudioError(f"{path} holds no tasks; Label Studio exports only annotated tasks: annotate some "
                               "first")
    return tasks


def import_reviews(output: str, export_path: str) -> dict:
    """Label Studio's annotations as reviews rows of one session; returns the counts and the session id."""
    tasks = read_export(export_path)
    con = query.connect(output)
    keys = [(str(t["data"].get("uri") or ""), str(t["data"].get("model_version") or "")) for t in tasks]
    con.register("wanted", pa.table({"uri": [u for u, _ in keys]}))
    latest = {}
    for uri, version, sha, label in con.execute(
            "SELECT uri, model_version, content_sha256, label FROM latest WHERE uri IN (SELECT uri FROM wanted) "
            "ORDER BY labeled_at").fetchall():
        latest[(uri, version)] = latest[(uri, "")] = {"uri": uri, "model_version": version,
                                                      "content_sha256": sha, "label": label}
    unknown = [key for key in keys if key not in latest]
    if len(unknown) == len(tasks):
        uri, version = unknown[0]
        raise LabelStudioError(
            f"none of the {len(tasks)} tasks of {export_path} is an image {output} has labeled (e.g. "
            f"{uri or 'a task without data.uri'}{f' of model version {version}' if version else ''}); "
            "give the output the tasks were exported from")
    session = new_id()
    log = ReviewLog(output, session, every=10_000)
    written = skipped = 0
    try:
        for task, key in zip(tasks, keys, strict=True):
            if key not in latest:
                continue
            row = latest[key]
            for annotation in task["annotations"]:
                label = chosen_label(annotation) if isinstance(annotation, dict) else None
                if label is None or annotation.get("was_cancelled"):
                    skipped += 1
                    continue
                review = review_row(row, "confirm" if label == row["label"] else "correct", label,
                                    reviewer_of(annotation), session)
                log.add({**review, "reviewed_at": annotated_at(annotation) or review["reviewed_at"]})
                written += 1
    finally:
        log.close()
    return {"written": written, "skipped": skipped, "unknown": len(unknown), "session_id": session,
            "example_unknown": unknown[0][0] if unknown else None}
