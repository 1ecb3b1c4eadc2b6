"""`alexlabel report`: one self-contained HTML page to review a labeling run.

Everything is inline (CSS, SVG charts, thumbnails as base64 JPEG data URIs; no scripts), so the page
opens offline, from a bucket or as a mail attachment. Every string taken from the data is escaped:
labels, uris and error messages come from files and checkpoints nobody vetted.
"""
import base64
import html
import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import duckdb

from common.storage import atomic_write_bytes, check_output_file, read_bytes
from output_tools import query
from schemas.images import jpeg_preview

THUMB_PX = 96
MAX_LABELS = 60  # charts beyond this many classes stop being readable; the page says how many were left out
BINS = 10
CSS = """body{font:14px system-ui,sans-serif;margin:24px;color:#222;background:#fff}h1{font-size:22px}
h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right}.meta{color:#555}.accept{fill:#3a7d44}.review{fill:#e08a1e}.bar{fill:#4a6fa5}
.chart text{font-size:12px;fill:#222}.hists,.queue{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0;border:1px solid #ddd;padding:6px;width:200px}figcaption{font-size:12px;overflow-wrap:anywhere}
.queue figure{width:150px}.noimg{width:96px;height:72px;background:#eee;color:#777;font-size:11px;
display:flex;align-items:center;justify-content:center}.uri{color:#666}.legend span{padding:0 6px;color:#fff}
td.msg{max-width:520px;overflow-wrap:anywhere}.strip{display:flex;gap:6px;align-items:flex-start;margin:6px 0;
padding:6px;border:1px solid #ddd}.strip figure{width:110px;border:0;padding:0}"""
SETS_SHOWN, PER_SET, ISSUES_SHOWN = 12, 6, 24  # duplicate sets, images per set, label errors and outliers


def esc(value) -> str:
    return html.escape(query.cell(value), quote=True)


def write_report(output: str, html_path: str, model: str | None = None, all_rows: bool = False, review_n: int = 48,
                 by: str = "confidence", max_errors: int = 200) -> dict:
    """Write the page for one model version (default: the most recently labeled); returns what it shows."""
    check_output_file(html_path, "--html")
    con = query.connect(output, model, all_rows)
    versions = query.label_versions(con)
    if len(versions) > 1:
        con = query.connect(output, versions[0], all_rows)
    shown = {"model_version": versions[0] if versions else model or "(none)", "other_versions": versions[1:],
             "rows": "every label and error row" if all_rows else "the latest row per (uri, model version)"}
    body, counts = sections(con, review_n, by, max_errors, all_rows, output)
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>alexlabel report: {esc(output)}'
            f"</title><style>{CSS}</style></head><body><h1>alexlabel report</h1>{header(output, shown)}{body}"
            "</body></html>\n")
    atomic_write_bytes(html_path, page.encode())
    return {**shown, **counts}


def header(output: str, shown: dict) -> str:
    others = (f" Also in this output: {esc(', '.join(shown['other_versions']))} (pick one with --model)."
              if shown["other_versions"] else "")
    return (f'<p class="meta">Output <code>{esc(output)}</code>, model version <code>{esc(shown["model_version"])}'
            f"</code>, written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.{others} Counts use {shown['rows']}.</p>")


def sections(con: duckdb.DuckDBPyConnection, review_n: int, by: str, max_errors: int,
             all_rows: bool, output: str) -> tuple[str, dict]:
    tables = query.summary(con)  # also fills label_stats, so the charts need no further pass over the rows
    all_labels = con.sql("SELECT label, accepted, review FROM label_stats WHERE total = 0 "
                         "ORDER BY images DESC, label").fetchall()
    n_labels, per_label = len(all_labels), all_labels[:MAX_LABELS]
    queue = query.review(con, review_n, by)["review"].fetchall() if review_n else []
    errors = con.sql(f'SELECT stage, error_type, uri, message FROM failed ORDER BY "at" DESC, uri LIMIT {max_errors}')
    n_errors = con.sql("SELECT count(*) FROM failed").fetchall()[0][0]
    counted = "rows (every error row)" if all_rows else "files (latest row per uri and model version)"
    more = f" ({n_labels - len(per_label)} smaller labels left out)" if n_labels > len(per_label) else ""
    body = (section("Summary", relation_table(tables["confidence"]))
            + section("Images per label" + more, '<p class="legend"><span style="background:#3a7d44">accept</span>'
                      '<span style="background:#e08a1e">review</span></p>' + bar_chart(per_label))
            + section("Confidence per label", histograms(con, [row[0] for row in per_label]))
            + section(f"Review queue: {len(queue)} rows with the lowest {esc(by)}",
                      f'<p class="meta">Confirm or correct them in the review app: <code>alexlabel review '
                      f'{esc(output)}</code></p>' + review_queue(queue))
            + (section("What people said", people(tables)) if "human_checked" in tables else "")
            + section("Curation: the latest audit", curation(con, output))
            + section(f"Errors: {n_errors} {counted}, showing {min(n_errors, max_errors)}",
                      relation_table(tables["errors"]) + relation_table(errors, "errors-table"))
            + section("Runs", relation_table(tables["runs"])))
    return body, {"labels": n_labels, "review": len(queue), "errors": n_errors}


def people(tables: dict) -> str:
    """The reviewed share of each version's rows and queue, and how often people found the model right."""
    return ('<p class="meta">Accuracy as people judged it (confirmed / (confirmed + corrected)), with 95% Wilson '
            'intervals; the accept rows show whether the accept threshold holds.</p>'
            + relation_table(tables["reviewed_share"], "reviewed-share")
            + relation_table(tables["human_checked"], "human-checked"))


def section(title: str, content: str) -> str:
    return f"<section><h2>{esc(title)}</h2>{content}</section>"


def relation_table(relation: duckdb.DuckDBPyRelation, table_id: str = "") -> str:
    rows = relation.fetchall()
    head = "".join(f"<th>{esc(c)}</th>" for c in relation.columns)
    body = "".join("<tr>" + "".join(f'<td class="{cell_class(c, v)}">{esc(v)}</td>' for c, v in
                                    zip(relation.columns, row, strict=True)) + "</tr>" for row in rows)
    attrs = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{attrs}><tr>{head}</tr>{body}</table>"


def cell_class(column: str, value) -> str:
    return "num" if isinstance(value, int | float) else "msg" if column in ("message", "uri", "example") else ""


def bar_chart(rows: list[tuple[str, int, int]]) -> str:
    """Horizontal bars per label, accepted and review stacked, the total at the end."""
    top, left, span, step = max((a + r for _, a, r in rows), default=1) or 1, 180, 520, 22
    parts = [f'<svg class="chart bar-chart" width="780" height="{len(rows) * step + 4}" role="img" '
             'aria-label="images per label">']
    for i, (label, accepted, review) in enumerate(rows):
        y, wa, wr = i * step, span * accepted / top, span * review / top
        parts += [f'<text x="{left - 8}" y="{y + 15}" text-anchor="end">{esc(label[:28])}</text>',
                  f'<rect class="accept" x="{left}" y="{y + 3}" width="{wa:.1f}" height="16">'
                  f"<title>{esc(label)}: {accepted} accept</title></rect>",
                  f'<rect class="review" x="{left + wa:.1f}" y="{y + 3}" width="{wr:.1f}" height="16">'
                  f"<title>{esc(label)}: {review} review</title></rect>",
                  f'<text x="{left + wa + wr + 6:.1f}" y="{y + 15}">{accepted + review}</text>']
    return "".join(parts) + "</svg>"


def histograms(con: duckdb.DuckDBPyConnection, labels: list[str]) -> str:
    """One small confidence histogram (BINS bins over 0..1) per label, each scaled to its own tallest bin."""
    bins = {label: [0] * BINS for label in labels}
    for label, b, n in con.sql(f"""SELECT label, least(floor(confidence * {BINS}), {BINS - 1})::INT, count(*)
                                   FROM analyzed GROUP BY ALL""").fetchall():
        if label in bins:
            bins[label][b] = n
    return '<div class="hists">' + "".join(histogram(label, counts) for label, counts in bins.items()) + "</div>"


def histogram(label: str, counts: list[int]) -> str:
    top, width, height = max(counts) or 1, 18, 70
    bars = "".join(f'<rect class="bar" x="{2 + i * width}" y="{height - height * n / top:.1f}" width="{width - 2}" '
                   f'height="{height * n / top:.1f}"><title>{i / BINS:.1f}-{(i + 1) / BINS:.1f}: {n}</title></rect>'
                   for i, n in enumerate(counts))
    return (f'<figure><svg class="chart histogram" width="184" height="88" role="img" '
            f'aria-label="confidence of {esc(label)}">{bars}<line x1="0" y1="70" x2="184" y2="70" stroke="#999"/>'
            '<text x="0" y="84">0</text>'
            f'<text x="176" y="84">1</text></svg><figcaption>{esc(label)}: {sum(counts)} images</figcaption></figure>')


def review_queue(rows: list[tuple]) -> str:
    items = [(uri, label, f"<b>{esc(label)}</b> {confidence:.3f}, margin {margin:.3f}"
              + (f", runner-up {esc(runner_up)}" if runner_up else ""))
             for uri, label, confidence, margin, runner_up, *_ in rows]
    return f'<div class="queue">{cards(items)}</div>'


def cards(items: list[tuple[str, str, str]]) -> str:
    """A figure per (uri, alt text, caption html) with the image's thumbnail; images are read in parallel, as they
    may sit in a bucket."""
    with ThreadPoolExecutor(8) as pool:
        thumbs = list(pool.map(thumbnail, [uri for uri, _, _ in items]))
    figures = []
    for (uri, alt, caption), thumb in zip(items, thumbs, strict=True):
        image = (f'<img class="thumb" src="{thumb}" alt="{esc(alt)}">' if thumb
                 else '<div class="noimg">no preview</div>')
        figures.append(f'<figure>{image}<figcaption>{caption}<br><span class="uri">{esc(uri)}</span></figcaption>'
                       "</figure>")
    return "".join(figures)


def curation(con: duckdb.DuckDBPyConnection, output: str) -> str:
    """What `alexlabel audit` found last: counts, duplicate sets as thumbnail strips, the likeliest label errors
    and the furthest outliers."""
    con.execute("""CREATE OR REPLACE TEMP VIEW issues_shown AS
                   SELECT * FROM latest_issues WHERE model_version IN (SELECT model_version FROM analyzed)""")
    audits = con.sql("SELECT audit_id FROM latest_audits WHERE model_version IN (SELECT model_version FROM analyzed)"
                     ).fetchall()
    if not audits:
        return (f'<p class="meta">No audit yet: <code>alexlabel audit {esc(output)}</code> finds duplicates, '
                "outliers, likely label errors and low confidence (label with --embeddings first).</p>")
    if not con.sql("SELECT count(*) FROM issues_shown").fetchall()[0][0]:
        return f'<p class="meta">The latest audit, {esc(audits[0][0])}, found no issues.</p>'
    worst = "SELECT uri, score, suggested_label, details FROM issues_shown WHERE issue = $1 ORDER BY score DESC, uri " \
            f"LIMIT {ISSUES_SHOWN}"
    counts = con.sql("""SELECT issue, count(*) AS images, count(DISTINCT group_id) AS sets, any_value(audit_id) AS audit
                        FROM issues_shown GROUP BY issue ORDER BY issue""")
    return (relation_table(counts, "issue-counts") + "<h3>Duplicate sets</h3>" + duplicate_strips(con)
            + "<h3>Likely label errors</h3>" + issue_cards(con.execute(worst, ["label_error"]).fetchall())
            + "<h3>Outliers</h3>" + issue_cards(con.execute(worst, ["outlier"]).fetchall()))


def duplicate_strips(con: duckdb.DuckDBPyConnection) -> str:
    sets = con.sql(f"""SELECT issue, group_id, count(*) AS size, max(score) AS score,
                              list(uri ORDER BY score DESC, uri)[1:{PER_SET}] AS uris
                       FROM issues_shown WHERE issue IN ('exact_duplicate', 'near_duplicate')
                       GROUP BY ALL ORDER BY size DESC, group_id LIMIT {SETS_SHOWN}""").fetchall()
    if not sets:
        return '<p class="meta">None found.</p>'
    return "".join(f'<div class="strip"><p>{esc(issue.replace("_", " "))}<br>{size} images<br>similarity '
                   f"{score:.3f}</p>{cards([(uri, 'duplicate', '') for uri in uris])}</div>"
                   for issue, _, size, score, uris in sets)


def issue_cards(rows: list[tuple]) -> str:
    if not rows:
        return '<p class="meta">None found.</p>'
    items = []
    for uri, score, suggested, details in rows:
        found = json.loads(details)
        given = found.get("given_label")
        reason = f"given <b>{esc(given)}</b>, model says <b>{esc(suggested)}</b>" if given else outlier_reason(found)
        caption = f"score {score:.3f}" + (f"<br>{reason}" if reason else "")  # an older audit's outliers give none
        items.append((uri, given or "outlier", caption))
    return f'<div class="queue">{cards(items)}</div>'


def outlier_reason(details: dict) -> str:
    """Why an outlier row is one, from the measures its details name as past their fence (output_tools/outlying.py)."""
    reasons = {"class": f"unlike the model's <b>{esc(details.get('class', ''))}</b>",
               "fingerprint": "pixels like no other image"}
    return ", ".join(reasons[m] for m in details.get("by", []) if m in reasons)


def thumbnail(uri: str) -> str | None:
    """A data URI of a ~THUMB_PX JPEG of the image, or None when it can no longer be read."""
    try:
        preview = jpeg_preview(read_bytes(uri), THUMB_PX, quality=75)
    except (OSError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(preview).decode()
