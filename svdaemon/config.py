"""Settings: every key of contract.md's configuration table, loaded from YAML and checked.

Three layers apply in order: built-in defaults, the config file, then overrides (CLI flags). Each layer
is checked as it is applied, so an error names where the bad value came from, the key and the value.
Relative paths in the file resolve against the file's folder; in overrides against the current
directory at load time (a flag is typed relative to where the user stands).
This module never imports torch: the fast commands (`status`, `queue`, ...) load the config too, so a
`cuda:N` beyond the real GPU count is caught when the engine resolves the device, not here.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import platformdirs
import yaml

from svdaemon.errors import ConfigError

log = logging.getLogger(__name__)

APP_NAME = "svdaemon"
LANGUAGES = ("auto", "zh", "en", "yue", "ja", "ko")
FORMATS = ("txt", "srt", "vtt", "json")
PRECISIONS = ("fp16", "bf16", "fp32")
OVERWRITE_POLICIES = ("never", "ours", "always")
MODEL_HUBS = ("ms", "hf")
TRAY_MODES = ("auto", "on", "off")
_OVERRIDES_SOURCE = "command line"
CONFIG_ENV = "SVDAEMON_CONFIG"

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")
_PATH_PREFIXES = ("~", "/", "./", "../", ".\\", "..\\")


@dataclass(frozen=True)
class SubtitleStyle:
    """How recognised text is cut into cues."""

    max_chars_per_line: int = 42
    max_chars_per_line_cjk: int = 16
    max_lines: int = 2
    min_duration_s: float = 0.8
    max_duration_s: float = 7.0
    max_cps: float = 20.0
    split_gap_s: float = 0.6
    sdh_events: bool = False


@dataclass(frozen=True)
class VadSettings:
    """How speech spans are found and bounded before they reach the model."""

    min_silence_s: float = 0.3
    max_segment_s: float = 30.0
    pad_s: float = 0.1


@dataclass(frozen=True)
class WatchRoot:
    """One watched folder; `language`, `formats`, `output_dir` of None mean "use the top-level value"."""

    path: Path
    recursive: bool = True
    priority: int = 0
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    polling: bool | Literal["auto"] = "auto"
    language: str | None = None
    formats: tuple[str, ...] | None = None
    output_dir: Path | None = None


def _default_state_dir() -> Path:
    return Path(platformdirs.user_state_dir(APP_NAME))


def default_watch_folder() -> Path:
    """`~/Transcribe`: watched when the config names no folder, and made on the daemon's first run."""
    return Path("~/Transcribe").expanduser()


def _default_watch() -> tuple[WatchRoot, ...]:
    return (WatchRoot(default_watch_folder()),)


@dataclass(frozen=True)
class Config:
    """Every setting, already checked; paths are absolute.

    The VRAM limit is `vram_fraction` of free memory when it is set, else `vram_budget_mb`.
    """

    model: str = "iic/SenseVoiceSmall"
    model_hub: Literal["ms", "hf"] = "ms"
    device: str = "auto"
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"
    half_max_rel_error: float = 0.05
    language: Literal["auto", "zh", "en", "yue", "ja", "ko"] = "auto"
    use_itn: bool = True
    formats: tuple[str, ...] = ("txt", "srt")
    output_dir: Path | None = None
    language_in_name: bool = False
    overwrite: Literal["never", "ours", "always"] = "ours"
    audio_language: str | None = None
    subtitles: SubtitleStyle = field(default_factory=SubtitleStyle)
    vad: VadSettings = field(default_factory=VadSettings)
    watch: tuple[WatchRoot, ...] = field(default_factory=_default_watch)
    settle_s: float = 5.0
    rescan_interval_s: float = 600.0
    skip_existing: bool = True
    max_attempts: int = 3
    error_sidecar: bool = False
    state_dir: Path = field(default_factory=_default_state_dir)
    vram_budget_mb: int = 2048
    vram_fraction: float | None = None
    vram_floor_mb: int = 1024
    idle_unload_s: float = 600.0
    fallback_to_cpu: bool = False
    tray: Literal["auto", "on", "off"] = "auto"
    notify: bool = True

    @property
    def log_file(self) -> Path:
        """The daemon's log (rotated), where the tray's Open log and `svdaemon status` point."""
        return self.state_dir / "svdaemon.log"


def default_config_path() -> Path:
    """`config.yaml` in the platform's user config dir (Linux: ~/.config/svdaemon/config.yaml)."""
    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.yaml"


def chosen_config_path(flag: Path | None, environ: Mapping[str, str] = os.environ) -> Path | None:
    """`--config`, else `SVDAEMON_CONFIG`; None means the default file, read only if it exists.

    A file named either way must exist: a typo must not silently run on the defaults.
    """
    if flag is not None:
        return flag
    named = environ.get(CONFIG_ENV, "")
    return Path(named) if named else None


def load_config(path: Path | None = None, overrides: Mapping[str, object] | None = None) -> Config:
    """Defaults, then the file, then `overrides` (config keys, nested sections as dicts).

    `path=None` reads the default file if there is one; an explicitly given file must exist.
    """
    config = Config()
    file_path = default_config_path() if path is None else Path(path)
    raw = _read_file(file_path, required=path is not None)
    if raw is not None:
        config = _apply_layer(config, raw, str(file_path), Path(os.path.abspath(file_path)).parent)
    if overrides:
        config = _apply_layer(config, overrides, _OVERRIDES_SOURCE, Path.cwd())
    return config


def effective_precision(device: str, precision: str) -> str:
    """Half precision is for CUDA; the CPU runs fp32 unless bf16 was asked for."""
    if device == "cpu":
        return "bf16" if precision == "bf16" else "fp32"
    return precision


def with_new_watch(current: Config, reloaded: Config) -> tuple[Config, tuple[str, ...]]:
    """What SIGHUP applies: the reloaded watch list, each root with its own settings, at once; and the
    other keys that differ, which the loaded model, open queue and sidecar settings hold until a restart."""
    waiting = tuple(
        spec.name
        for spec in fields(Config)
        if spec.name != "watch" and getattr(current, spec.name) != getattr(reloaded, spec.name)
    )
    return replace(current, watch=reloaded.watch), waiting


def model_location(value: str, base_dir: Path, is_dir: Callable[[Path], bool] = Path.is_dir) -> str:
    """A hub id (`iic/SenseVoiceSmall`) stays as given; a local model directory becomes an absolute path.

    Local means written as a path (`~`, `/`, `./`, `../`, absolute) or naming a directory that exists
    under `base_dir`: a folder beside the config file wins over a hub id of the same name.
    """
    if value.startswith(_PATH_PREFIXES) or os.path.isabs(value) or is_dir(base_dir / value):
        return str(_resolve_path(value, base_dir))
    return value


def _resolve_path(value: str | os.PathLike[str], base_dir: Path) -> Path:
    return Path(os.path.normpath(base_dir / Path(value).expanduser()))


def _read_file(path: Path, required: bool) -> object:
    """The file's top-level value ({} for an empty file); None when an optional file is missing."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"{path}: config file not found") from None
        log.debug("no config file at %s; using built-in defaults", path)
        return None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror}") from None
    try:
        loaded = yaml.safe_load(data)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(f"{path}: {where}invalid YAML: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {str(err).splitlines()[0]}") from None
    log.debug("config loaded from %s", path)
    return {} if loaded is None else loaded


def _apply_layer(config: Config, raw: object, source: str, base_dir: Path) -> Config:
    """`config` with the settings in `raw` applied; errors are prefixed with `source`."""
    try:
        updates = _parse_mapping(raw, "", _config_parsers(config, base_dir))
        if "vram_budget_mb" in updates:
            if updates.get("vram_fraction") is not None:
                raise ConfigError(
                    "vram_budget_mb and vram_fraction are both given — give one: a budget in MB "
                    "or a fraction of free VRAM"
                )
            updates["vram_fraction"] = None  # a budget from this layer replaces a fraction from below
        updated = replace(config, **updates)
        _check_durations(updated.subtitles)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return updated


def _check_durations(style: SubtitleStyle) -> None:
    if style.min_duration_s >= style.max_duration_s:
        raise ConfigError(
            f"subtitles.min_duration_s: {style.min_duration_s:g} — must be less than "
            f"subtitles.max_duration_s ({style.max_duration_s:g})"
        )


# Parsers: each takes a raw value and returns it normalised, or raises _Invalid saying what was expected.
_Parser = Callable[[object], object]


class _Invalid(ValueError):
    """A value failed its check; the caller adds the key and the value to the message."""


def _parse_mapping(raw: object, name: str, parsers: Mapping[str, _Parser]) -> dict[str, object]:
    """Each key of `raw` parsed by its parser; `name` is the mapping's dotted key ("" at the top)."""
    if not isinstance(raw, Mapping):
        expected = "expected a mapping of settings" if not name else "expected a mapping"
        raise ConfigError(f"{name or 'top level'}: {_show(raw)} — {expected}")
    prefix = f"{name}." if name else ""
    parsed: dict[str, object] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        parser = parsers.get(key) if isinstance(key, str) else None
        if parser is None:
            close = difflib.get_close_matches(str(key), list(parsers), n=1)
            hint = f" — did you mean {prefix}{close[0]}?" if close else ""
            raise ConfigError(f"unknown key {dotted}{hint}")
        try:
            parsed[key] = parser(value)
        except _Invalid as err:
            raise ConfigError(f"{dotted}: {_show(value)} — {err}") from None
    return parsed


def _show(value: object) -> str:
    """The value as the user wrote it, near enough: JSON-ish, strings quoted, cut when long."""
    text = json.dumps(value, ensure_ascii=False, default=str, skipkeys=True)
    return text if len(text) <= 60 else text[:57] + "..."


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid("expected true or false")
    return value


def _integer(minimum: int | None = None) -> _Parser:
    expected = "expected an integer" if minimum is None else f"expected an integer >= {minimum}"

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise _Invalid(expected)
        return value

    return parse


def _as_number(value: object) -> float:
    """The value as a float, or NaN (which fails every range check) when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return math.nan
    return float(value)


def _number(positive: bool = False) -> _Parser:
    """Numbers accept ints (YAML `7`) and come back as float; all are >= 0, or > 0 when `positive`."""

    def parse(value: object) -> float:
        number = _as_number(value)
        if not (number > 0 if positive else number >= 0):
            raise _Invalid("expected a number > 0" if positive else "expected a number >= 0")
        return number

    return parse


def _fraction(value: object) -> float:
    number = _as_number(value)
    if not 0 < number <= 1:
        raise _Invalid("expected a number in (0, 1]")
    return number


def _choice(options: tuple[str, ...]) -> _Parser:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Invalid("expected one of " + ", ".join(options))
        return value

    return parse


def _optional(parser: _Parser) -> _Parser:
    return lambda value: None if value is None else parser(value)


def _text(value: object) -> str:
    """A non-empty string; a path object from a CLI caller counts as its string."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise _Invalid("expected a non-empty string")
    return value


def _device(value: object) -> str:
    if not isinstance(value, str) or not _DEVICE.fullmatch(value):
        raise _Invalid("expected auto, cpu, cuda or cuda:N")
    return value


def _tray(value: object) -> str:
    """YAML 1.1 reads a bare `on`/`off` as a boolean: take those as the strings the user meant."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, str) and value in TRAY_MODES:
        return value
    raise _Invalid("expected auto, on or off")


def _polling(value: object) -> bool | str:
    if isinstance(value, bool) or value == "auto":
        return value
    raise _Invalid("expected auto, true or false")


def _formats(value: object) -> tuple[str, ...]:
    """A list, or a comma string as the CLI's `--formats txt,srt` passes it; duplicates dropped."""
    items = [item.strip() for item in value.split(",")] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise _Invalid("expected a non-empty list drawn from " + ", ".join(FORMATS))
    for item in items:
        if not isinstance(item, str) or item not in FORMATS:
            raise _Invalid(f"{_show(item)} is not one of " + ", ".join(FORMATS))
    return tuple(dict.fromkeys(items))


def _globs(value: object) -> tuple[str, ...]:
    """A list of glob patterns; a single pattern on its own is taken as a list of one."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(item, str) and item for item in items):
        raise _Invalid("expected a list of glob patterns")
    return tuple(items)


def _path(base_dir: Path) -> _Parser:
    return lambda value: _resolve_path(_text(value), base_dir)


def _state_dir(base_dir: Path) -> _Parser:
    """null means the platform's user state dir, so the example file can show the default."""
    return lambda value: _default_state_dir() if value is None else _resolve_path(_text(value), base_dir)


def _model(base_dir: Path) -> _Parser:
    return lambda value: model_location(_text(value), base_dir)


def _section(name: str, current: object, parsers: Mapping[str, _Parser]) -> _Parser:
    """A nested mapping applied over `current`; an empty section (`vad:` alone) changes nothing."""
    return lambda value: replace(current, **_parse_mapping({} if value is None else value, name, parsers))


def _watch(base_dir: Path) -> _Parser:
    path = _path(base_dir)
    root_parsers: dict[str, _Parser] = {
        "path": path,
        "recursive": _boolean,
        "priority": _integer(),
        "include": _globs,
        "exclude": _globs,
        "polling": _polling,
        "language": _optional(_choice(LANGUAGES)),
        "formats": _optional(_formats),
        "output_dir": _optional(path),
    }

    def parse(value: object) -> tuple[WatchRoot, ...]:
        if not isinstance(value, (list, tuple)):
            raise _Invalid("expected a list of folders, each {path: ...} ([] for none)")
        roots = []
        for index, item in enumerate(value):
            settings = _parse_mapping(item, f"watch[{index}]", root_parsers)
            if "path" not in settings:
                raise ConfigError(f"watch[{index}].path: missing — every watched folder needs a path")
            roots.append(WatchRoot(**settings))
        return tuple(roots)

    return parse


_SUBTITLE_PARSERS: dict[str, _Parser] = {
    "max_chars_per_line": _integer(1),
    "max_chars_per_line_cjk": _integer(1),
    "max_lines": _integer(1),
    "min_duration_s": _number(),
    "max_duration_s": _number(positive=True),
    "max_cps": _number(positive=True),
    "split_gap_s": _number(),
    "sdh_events": _boolean,
}

_VAD_PARSERS: dict[str, _Parser] = {
    "min_silence_s": _number(),
    "max_segment_s": _number(positive=True),
    "pad_s": _number(),
}


def _config_parsers(current: Config, base_dir: Path) -> dict[str, _Parser]:
    """One parser per top-level key; sections apply over `current`, paths resolve against `base_dir`."""
    path = _path(base_dir)
    return {
        "model": _model(base_dir),
        "model_hub": _choice(MODEL_HUBS),
        "device": _device,
        "precision": _choice(PRECISIONS),
        "half_max_rel_error": _number(positive=True),
        "language": _choice(LANGUAGES),
        "use_itn": _boolean,
        "formats": _formats,
        "output_dir": _optional(path),
        "language_in_name": _boolean,
        "overwrite": _choice(OVERWRITE_POLICIES),
        "audio_language": _optional(_text),
        "subtitles": _section("subtitles", current.subtitles, _SUBTITLE_PARSERS),
        "vad": _section("vad", current.vad, _VAD_PARSERS),
        "watch": _watch(base_dir),
        "settle_s": _number(),
        "rescan_interval_s": _number(positive=True),
        "skip_existing": _boolean,
        "max_attempts": _integer(1),
        "error_sidecar": _boolean,
        "state_dir": _state_dir(base_dir),
        "vram_budget_mb": _integer(1),
        "vram_fraction": _optional(_fraction),
        "vram_floor_mb": _integer(0),
        "idle_unload_s": _number(),
        "fallback_to_cpu": _boolean,
        "tray": _tray,
        "notify": _boolean,
    }
