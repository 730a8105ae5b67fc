"""The config stage: defaults, the example file, precedence, paths and the messages a user reads."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from svdaemon.config import (
    Config,
    SubtitleStyle,
    VadSettings,
    WatchRoot,
    chosen_config_path,
    default_config_path,
    load_config,
    model_location,
    with_new_watch,
)
from svdaemon.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.yaml"


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep the user's real config and state folders out of every test."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_STATE_HOME", str(home / ".local" / "state"))
    return home


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_for(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    return str(caught.value)


# Defaults and the example file


def test_missing_default_file_gives_the_built_in_defaults(private_home: Path) -> None:
    config = load_config()
    assert config == Config()
    assert config.model == "iic/SenseVoiceSmall"
    assert config.formats == ("txt", "srt")
    assert config.subtitles == SubtitleStyle(42, 16, 2, 0.8, 7.0, 20.0, 0.6, False)
    assert config.vad == VadSettings(0.3, 30.0, 0.1)
    assert config.watch == (WatchRoot(private_home / "Transcribe"),)
    assert config.state_dir == private_home / ".local" / "state" / "svdaemon"
    assert (config.vram_budget_mb, config.vram_fraction, config.tray) == (2048, None, "auto")


def test_the_default_file_is_read_when_it_exists(private_home: Path) -> None:
    path = default_config_path()
    assert path == private_home / ".config" / "svdaemon" / "config.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("device: cpu\n", encoding="utf-8")
    assert load_config().device == "cpu"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing yet\n")) == Config()


def test_example_file_loads_to_exactly_the_defaults() -> None:
    assert load_config(EXAMPLE) == Config()


def test_example_file_shows_every_key_with_a_comment() -> None:
    example = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))

    def names(cls: type) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    assert set(example) == names(Config)
    assert set(example["subtitles"]) == names(SubtitleStyle)
    assert set(example["vad"]) == names(VadSettings)
    assert set(example["watch"][0]) == names(WatchRoot)
    for line in EXAMPLE.read_text(encoding="utf-8").splitlines():
        assert not line.strip() or "#" in line, f"no comment on: {line}"


# Error messages: source, key and value in one line


def test_missing_explicit_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: config file not found"):
        load_config(missing)


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    message = error_for(tmp_path, "device: cpu\nformats: [txt, srt\nlanguage: en\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}: line ")
    assert "invalid YAML" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    message = error_for(tmp_path, "- device: cpu\n")
    assert str(tmp_path / "config.yaml") in message
    assert "expected a mapping of settings" in message


def test_bad_choice_names_key_value_and_options(tmp_path: Path) -> None:
    message = error_for(tmp_path, "precision: fp8\n")
    assert message == f'{tmp_path / "config.yaml"}: precision: "fp8" — expected one of fp16, bf16, fp32'


@pytest.mark.parametrize(
    ("text", "key", "shown"),
    [
        ("language: de\n", "language", '"de"'),
        ("language: no\n", "language", "false"),  # YAML 1.1: a bare `no` is a boolean
        ("overwrite: sometimes\n", "overwrite", '"sometimes"'),
        ("model_hub: github\n", "model_hub", '"github"'),
        ("device: gpu\n", "device", '"gpu"'),
        ("device: cuda:x\n", "device", '"cuda:x"'),
        ("use_itn: 1\n", "use_itn", "1"),
        ("notify: 'yes'\n", "notify", '"yes"'),
        ("max_attempts: true\n", "max_attempts", "true"),
        ("max_attempts: 0\n", "max_attempts", "0"),
        ("vram_budget_mb: 1.5\n", "vram_budget_mb", "1.5"),
        ("vram_floor_mb: -1\n", "vram_floor_mb", "-1"),
        ("settle_s: -1\n", "settle_s", "-1"),
        ("settle_s: fast\n", "settle_s", '"fast"'),
        ("rescan_interval_s: 0\n", "rescan_interval_s", "0"),
        ("idle_unload_s: .inf\n", "idle_unload_s", "Infinity"),
        ("vram_fraction: 1.5\n", "vram_fraction", "1.5"),
        ("vram_fraction: 0\n", "vram_fraction", "0"),
        ("tray: maybe\n", "tray", '"maybe"'),
        ("model: ''\n", "model", '""'),
        ("formats: []\n", "formats", "[]"),
        ("output_dir: 5\n", "output_dir", "5"),
        ("subtitles: 5\n", "subtitles", "5"),
        ("subtitles: {max_lines: 0}\n", "subtitles.max_lines", "0"),
        ("subtitles: {max_cps: 0}\n", "subtitles.max_cps", "0"),
        ("subtitles: {sdh_events: 1}\n", "subtitles.sdh_events", "1"),
        ("vad: {max_segment_s: 0}\n", "vad.max_segment_s", "0"),
        ("vad: {pad_s: -0.1}\n", "vad.pad_s", "-0.1"),
        ("watch: ~/Music\n", "watch", '"~/Music"'),
        ("watch: [~/Music]\n", "watch[0]", '"~/Music"'),
        ("watch: [{path: a}, {path: b, priority: high}]\n", "watch[1].priority", '"high"'),
        ("watch: [{path: a, recursive: 'no'}]\n", "watch[0].recursive", '"no"'),
        ("watch: [{path: a, polling: sometimes}]\n", "watch[0].polling", '"sometimes"'),
        ("watch: [{path: a, include: [1]}]\n", "watch[0].include", "[1]"),
        ("watch: [{path: a, language: fr}]\n", "watch[0].language", '"fr"'),
    ],
)
def test_bad_values_name_the_key_and_the_value(tmp_path: Path, text: str, key: str, shown: str) -> None:
    message = error_for(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'config.yaml'}: {key}: {shown} — expected"), message


def test_bad_format_names_the_bad_item(tmp_path: Path) -> None:
    assert '"doc" is not one of txt, srt, vtt, json' in error_for(tmp_path, "formats: [txt, doc]\n")


def test_watch_root_needs_a_path(tmp_path: Path) -> None:
    assert "watch[0].path: missing" in error_for(tmp_path, "watch: [{recursive: false}]\n")


def test_min_duration_must_be_below_max_duration(tmp_path: Path) -> None:
    message = error_for(tmp_path, "subtitles: {min_duration_s: 8}\n")
    assert "subtitles.min_duration_s: 8 — must be less than subtitles.max_duration_s (7)" in message


@pytest.mark.parametrize(
    ("text", "unknown", "suggestion"),
    [
        ("precison: fp32\n", "precison", "precision"),
        ("subtitles: {max_line: 3}\n", "subtitles.max_line", "subtitles.max_lines"),
        ("vad: {padding_s: 0.2}\n", "vad.padding_s", "vad.pad_s"),
        ("watch: [{path: a, recursve: false}]\n", "watch[0].recursve", "watch[0].recursive"),
    ],
)
def test_unknown_key_is_named_with_a_close_match(
    tmp_path: Path, text: str, unknown: str, suggestion: str
) -> None:
    assert error_for(tmp_path, text).endswith(f"unknown key {unknown} — did you mean {suggestion}?")


def test_unknown_key_without_a_close_match_is_still_named(tmp_path: Path) -> None:
    assert error_for(tmp_path, "zzz: 1\n").endswith("unknown key zzz")


# Normalised values


@pytest.mark.parametrize(
    ("written", "mode"), [("on", "on"), ("off", "off"), ("true", "on"), ("false", "off"), ("'auto'", "auto")]
)
def test_tray_accepts_yaml_booleans(tmp_path: Path, written: str, mode: str) -> None:
    assert load_config(write(tmp_path, f"tray: {written}\n")).tray == mode


def test_formats_accept_a_comma_string_and_drop_duplicates(tmp_path: Path) -> None:
    assert load_config(overrides={"formats": "txt, srt,vtt,txt"}).formats == ("txt", "srt", "vtt")
    assert load_config(write(tmp_path, "formats: [json, json, srt]\n")).formats == ("json", "srt")
    with pytest.raises(ConfigError, match=r'formats: "txt,doc" — "doc" is not one of'):
        load_config(overrides={"formats": "txt,doc"})


def test_numbers_accept_integers_and_cuda_index(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "device: cuda:1\nsettle_s: 2\nvad: {max_segment_s: 20}\n"))
    assert config.device == "cuda:1"
    assert config.settle_s == 2.0 and isinstance(config.settle_s, float)
    assert config.vad == VadSettings(max_segment_s=20.0)


def test_empty_section_keeps_its_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "subtitles:\nvad:\n")) == Config()


def test_watch_root_options(tmp_path: Path) -> None:
    text = (
        "watch:\n"
        "  - {path: in, recursive: false, priority: -2, include: '*.mp3', exclude: ['*.part'], polling: on,\n"
        "     language: ja, formats: 'srt,srt', output_dir: out}\n"
    )
    (root,) = load_config(write(tmp_path, text)).watch
    assert root == WatchRoot(
        path=tmp_path / "in",
        recursive=False,
        priority=-2,
        include=("*.mp3",),
        exclude=("*.part",),
        polling=True,
        language="ja",
        formats=("srt",),
        output_dir=tmp_path / "out",
    )
    assert load_config(write(tmp_path, "watch: []\n")).watch == ()


# vram_budget_mb versus vram_fraction


def test_vram_fraction_instead_of_budget(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "vram_fraction: 0.5\n")).vram_fraction == 0.5
    assert load_config(write(tmp_path, "vram_budget_mb: 4096\nvram_fraction: null\n")).vram_fraction is None


def test_vram_fraction_and_budget_together_is_an_error_naming_both(tmp_path: Path) -> None:
    message = error_for(tmp_path, "vram_budget_mb: 4096\nvram_fraction: 0.5\n")
    assert "vram_budget_mb" in message and "vram_fraction" in message


def test_a_budget_from_a_higher_layer_replaces_a_fraction_from_below(tmp_path: Path) -> None:
    path = write(tmp_path, "vram_fraction: 0.5\n")
    config = load_config(path, overrides={"vram_budget_mb": 3000})
    assert (config.vram_budget_mb, config.vram_fraction) == (3000, None)
    config = load_config(write(tmp_path, "vram_budget_mb: 3000\n"), overrides={"vram_fraction": 0.25})
    assert config.vram_fraction == 0.25


# Precedence: overrides > file > defaults


def test_overrides_win_over_the_file_which_wins_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, "device: cpu\nlanguage: zh\nsubtitles: {max_lines: 3, max_cps: 15}\n")
    config = load_config(path, overrides={"language": "en", "subtitles": {"max_lines": 1}})
    assert config.device == "cpu"  # file
    assert config.language == "en"  # override
    assert config.subtitles.max_lines == 1  # override, nested
    assert config.subtitles.max_cps == 15.0  # file, beside an overridden sibling
    assert config.subtitles.max_chars_per_line == 42  # default
    assert config.precision == "fp16"  # default


def test_override_errors_say_they_came_from_the_command_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r'^command line: precision: "fp8" — expected one of'):
        load_config(write(tmp_path, "precision: fp32\n"), overrides={"precision": "fp8"})
    with pytest.raises(ConfigError, match=r"^command line: unknown key output — did you mean output_dir"):
        load_config(overrides={"output": "x"})


def test_override_can_set_a_key_back_to_null(tmp_path: Path) -> None:
    path = write(tmp_path, "output_dir: subs\n")
    assert load_config(path, overrides={"output_dir": None}).output_dir is None


# Paths


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path, private_home: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    text = "output_dir: subs\nstate_dir: ../state\nwatch: [{path: ~/inbox, output_dir: ./x/../out}]\n"
    config = load_config(write(folder, text))
    assert config.output_dir == folder / "subs"
    assert config.state_dir == tmp_path / "state"
    assert config.watch[0].path == private_home / "inbox"
    assert config.watch[0].output_dir == folder / "out"


def test_override_paths_resolve_against_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    monkeypatch.chdir(tmp_path)
    config = load_config(write(folder, "state_dir: st\n"), overrides={"output_dir": Path("subs")})
    assert config.output_dir == tmp_path / "subs"
    assert config.state_dir == folder / "st"


def test_state_dir_null_means_the_platform_default(tmp_path: Path, private_home: Path) -> None:
    config = load_config(write(tmp_path, "state_dir: /elsewhere\n"), overrides={"state_dir": None})
    assert config.state_dir == private_home / ".local" / "state" / "svdaemon"


def test_model_hub_id_and_local_folder(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "model: iic/SenseVoiceSmall\n")).model == "iic/SenseVoiceSmall"
    (tmp_path / "models" / "sv").mkdir(parents=True)
    assert load_config(write(tmp_path, "model: models/sv\n")).model == str(tmp_path / "models" / "sv")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("iic/SenseVoiceSmall", "iic/SenseVoiceSmall"),
        ("FunAudioLLM/SenseVoiceSmall", "FunAudioLLM/SenseVoiceSmall"),
        ("./sv", "/conf/sv"),
        ("../models/sv", "/models/sv"),
        ("/opt/sv", "/opt/sv"),
        ("local/sv", "/conf/local/sv"),  # an existing folder beside the config wins over a hub id
    ],
)
def test_model_location_rule(value: str, expected: str) -> None:
    def existing(path: Path) -> bool:
        return path == Path("/conf/local/sv")

    assert model_location(value, Path("/conf"), is_dir=existing) == expected


def test_model_location_expands_home(private_home: Path) -> None:
    assert model_location("~/sv", Path("/conf"), is_dir=lambda _: False) == str(private_home / "sv")


def test_sighup_takes_the_new_watch_list_and_names_what_waits_for_a_restart(tmp_path):
    current = Config(state_dir=tmp_path, formats=("txt",))
    new_root = WatchRoot(tmp_path / "new", formats=("vtt",), output_dir=tmp_path / "out")
    reloaded = dataclasses.replace(current, watch=(new_root,), formats=("srt",), model="/models/other")
    applied, waiting = with_new_watch(current, reloaded)
    assert applied.watch == (new_root,) and applied.formats == ("txt",) and applied.model == current.model
    assert waiting == ("model", "formats")


def test_the_config_file_comes_from_the_flag_then_the_environment_then_the_default(tmp_path):
    flag, named = tmp_path / "flag.yaml", tmp_path / "env.yaml"
    assert chosen_config_path(flag, {"SVDAEMON_CONFIG": str(named)}) == flag
    assert chosen_config_path(None, {"SVDAEMON_CONFIG": str(named)}) == named
    assert chosen_config_path(None, {"SVDAEMON_CONFIG": ""}) is None
    assert chosen_config_path(None, {}) is None
