"""The tools over the output tables: DuckDB queries, the HTML report, export back to training data. No Beam."""
