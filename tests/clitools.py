"""Helpers shared by the CLI tests (importable because pytest puts tests/ on sys.path)."""

import json

from regtool.config import Config, config_to_dict


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


def config_toml(cfg: Config) -> str:
    """Return the TOML text of a whole `Config` (every section and key)."""
    lines = []
    for section, values in config_to_dict(cfg).items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"
