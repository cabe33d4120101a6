"""Config loading: defaults equal configs/default.toml, validation names the bad key."""

from __future__ import annotations

import pytest

from regtool.config import Config, config_to_dict, load_config, read_toml
from regtool.errors import ConfigError


def test_default_toml_equals_dataclass_defaults(repo_root):
    assert read_toml(repo_root / "configs" / "default.toml") == config_to_dict(Config())


def test_paper_defaults():
    c = Config()
    assert c.shapespace.latent_dim == 5
    assert c.register.momentum == 0.9 and c.register.lr_decay == 0.95
    assert c.register.iterations == 30 and c.register.pose_every == 3
    assert c.evaluate.pose_noise_xy == 0.05 and c.evaluate.pose_noise_deg == 15.0


def test_gpu_profile_is_the_papers_network():
    gpu = load_config(profile="gpu")
    assert gpu.unet.feature_channels == 64  # StilllebenDR's feature map
    assert (gpu.unet.image_width, gpu.unet.image_height) == (320, 240)
    assert gpu.render == Config().render  # images take the U-Net's size (no second size key)
    assert gpu.unet.steps > Config().unet.steps
    assert gpu.register == Config().register  # only the network and the image size differ
    assert load_config(profile="cpu") == Config()


def test_profile_then_file_then_flags(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[unet]\nsteps = 7\nfeature_channels = 32\n")
    c = load_config(path, {"unet": {"steps": 5}}, profile="gpu")
    assert (c.unet.steps, c.unet.feature_channels, c.unet.depth) == (5, 32, 4)
    with pytest.raises(ConfigError, match="unknown profile 'tpu'"):
        load_config(profile="tpu")


def test_device_picks_the_profile(tmp_path):
    from regtool.cli.app import GlobalOptions

    assert GlobalOptions(device="cuda").config_profile() == "gpu"
    assert GlobalOptions(device="cuda:1").config_profile() == "gpu"
    assert GlobalOptions(device="cpu").config_profile() is None
    assert GlobalOptions(device="cuda", profile="cpu").config_profile() == "cpu"
    assert GlobalOptions(device="cpu", profile="gpu").config_profile() == "gpu"


def test_quick_profile_loads_and_is_smaller(repo_root):
    quick = load_config(repo_root / "configs" / "quick.toml")
    assert quick.unet.steps < Config().unet.steps
    assert quick.shapespace.max_iterations < Config().shapespace.max_iterations


def test_default_profile_trains_the_quick_network_longer(repo_root):
    quick = load_config(repo_root / "configs" / "quick.toml").unet
    cpu = Config().unet
    assert (cpu.base_channels, cpu.depth, cpu.feature_channels, cpu.image_width) == (
        quick.base_channels, quick.depth, quick.feature_channels, quick.image_width)
    assert quick.steps < cpu.steps < load_config(profile="gpu").unet.steps


@pytest.mark.parametrize("text, key", [
    ("[register]\niterations = 'ten'\n", "register.iterations"),
    ("[register]\nmomentum = 1.5\n", "register.momentum"),
    ("[shapespace]\nlatent_dim = 0\n", "shapespace.latent_dim"),
    ("[register]\nloss = 'perceptual'\n", "register.loss"),
    ("[register]\nitertions = 3\n", "register.itertions"),
    ("[unet]\nbase_channels = true\n", "unet.base_channels"),
    ("[make_dataset]\ncategories = ['bottle', 'car']\n", "make_dataset.categories"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(path)


def test_unknown_section_and_malformed_toml(tmp_path):
    (tmp_path / "a.toml").write_text("[regster]\niterations = 3\n")
    with pytest.raises(ConfigError, match="unknown config section 'regster'"):
        load_config(tmp_path / "a.toml")
    (tmp_path / "b.toml").write_text("[register\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(tmp_path / "b.toml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_overrides_beat_the_file_and_none_is_ignored(tmp_path):
    (tmp_path / "c.toml").write_text("[register]\niterations = 7\nlearning_rate = 0.5\n")
    c = load_config(tmp_path / "c.toml", {"register": {"iterations": 3, "learning_rate": None}})
    assert c.register.iterations == 3 and c.register.learning_rate == 0.5


def test_config_reference_is_current_and_complete(repo_root):
    """docs/config.md is what scripts/config_docs.py writes now, and every key is documented."""
    import dataclasses
    from typing import get_type_hints

    from regtool.config import config_reference_markdown

    doc = (repo_root / "docs" / "config.md").read_text(encoding="utf-8")
    assert doc == config_reference_markdown(), "run scripts/config_docs.py"
    for section in dataclasses.fields(Config):
        for f in dataclasses.fields(get_type_hints(Config)[section.name]):
            assert f.metadata["doc"], f"{section.name}.{f.name} has no doc"
            assert f"| `{f.name}` |" in doc


def test_ci_runs_exactly_the_readmes_test_command(repo_root):
    """.ci/run's command is the README's test command (set-up, lint, tests)."""
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    ci = (repo_root / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert ci.startswith("bash scripts/setup.sh && ")
    assert f"```bash\n{ci}\n```" in readme


@pytest.mark.parametrize("section, key, value, match", [
    ("render", "light_direction", [0.0, 0.0, 0.0], "non-zero 3-vector"),
    ("render", "light_direction", [1.0, 0.0], "non-zero 3-vector"),
    ("render", "albedo", [0.5, 0.5], "3 numbers"),
    ("render", "albedo", [0.5, 0.5, 1.5], "<= 1.0"),
    ("evaluate", "elevation_deg", [40.0, 10.0], "low <= high"),
    ("evaluate", "elevation_deg", [10.0], "low <= high"),
    ("register", "divergence_factor", 0.5, ">= 1.0"),
    ("render", "image_type", "rgb", "unknown config key 'render.image_type'"),
    ("render", "width", 160, "unknown config key 'render.width'"),
])
def test_formerly_hidden_knobs_are_validated(section, key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides={section: {key: value}})


def test_renderer_settings_come_from_the_render_section():
    from regtool.render.diff import DiffRenderSettings

    render = load_config(overrides={"render": {"ambient": 0.2, "occlusion_tolerance": 0.05,
                                               "light_direction": [0, 0, 1]}}).render
    settings = DiffRenderSettings.from_config(render)
    assert (settings.ambient, settings.occlusion_tolerance) == (0.2, 0.05)
    assert settings.light_direction == (0.0, 0.0, 1.0)
    # The built-in values are the renderer's own defaults: registration renders as before.
    default = DiffRenderSettings.from_config(Config().render)
    assert default == DiffRenderSettings()
