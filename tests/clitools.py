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


# The tests' tiny U-Net: 128x96 views, 6 base channels, depth 3, 12 feature channels, trained
# on plain views (no clutter, distractors, occluders or camera effects: the same views and
# network as before those existed; the fixture serves the registration mechanics, the clutter
# has its own tests).
TINY_UNET = {"base_channels": 6, "depth": 3, "feature_channels": 12, "image_width": 128,
             "image_height": 96, "steps": 400, "batch_size": 4, "learning_rate": 0.003,
             "val_views": 8, "val_every": 100, "checkpoint_every": 100, "render_workers": 1,
             "clutter": 0.0, "distractors": 0.0, "occluders": 0.0, "photometric": 0.0}


def tiny_config_text(**unet_overrides) -> str:
    """Return the TOML text of the tiny U-Net config, [unet] keys replaced by `unet_overrides`."""
    unet = {**TINY_UNET, **unet_overrides}
    lines = ["[unet]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in unet.items()]
    return "\n".join(lines) + "\n"
