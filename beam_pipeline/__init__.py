"""The labeling pipeline: image buckets in, Parquet labels/errors/runs tables out, on any Beam runner."""
