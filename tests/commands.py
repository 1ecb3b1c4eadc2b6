"""Running the `alexlabel` command in-process, and reading the one-line error it must give for bad input."""
from click.testing import CliRunner

from alexlabel.cli import main


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]
