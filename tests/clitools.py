"""Assertions shared by the CLI tests (importable because pytest puts tests/ on sys.path)."""


def one_line_error(result, *fragments):
    """Assert a CliRunner result is a bad-input failure: exit code 2, exactly one non-empty
    output line starting with 'error: ', no traceback, containing every fragment."""
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.output
    for f in fragments:
        assert f in lines[0], lines[0]
