"""config.toml -> frozen dataclasses.

Lookup order: --config PATH, ./config.toml, the user config dir, built-in defaults.
Every key is checked: an unknown key or a wrong type is a ConfigError naming the key.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from tokentree.errors import ConfigError
from tokentree.paths import user_config_path


@dataclass(frozen=True)
class ModelConfig:
    name: str = "Qwen/Qwen2.5-0.5B"
    # Prompt tokens per forward call when a prompt is read: bounds its memory (a call holds
    # chunk x vocabulary logits) without a second pass.
    prefill_chunk: int = 512


@dataclass(frozen=True)
class PromptConfig:
    example_prompt: str = "prompts/gsm8k.txt"


@dataclass(frozen=True)
class DisplayConfig:
    tokens_to_show: int = 30
    cache_size: int = 100


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    # command name -> keys; validated against the command registry by the TUI.
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None

    @property
    def top_k(self) -> int:
        """How many next tokens are cached per node: never fewer than 64."""
        return max(64, self.display.tokens_to_show)


_SECTIONS = {"model": ModelConfig, "prompt": PromptConfig, "display": DisplayConfig}
_POSITIVE = {("display", "tokens_to_show"), ("display", "cache_size"), ("model", "prefill_chunk")}


def find_config(explicit: str | Path | None) -> Path | None:
    """The config file to read, or None for built-in defaults."""
    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    for candidate in (Path.cwd() / "config.toml", user_config_path()):
        if candidate.is_file():
            return candidate
    return None


def load_config(explicit: str | Path | None = None) -> Config:
    path = find_config(explicit)
    if path is None:
        return Config()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    return parse_config(raw, source=path)


def parse_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    where = f"{source}: " if source else ""
    sections: dict[str, Any] = {}
    keys: dict[str, tuple[str, ...]] = {}
    for name, value in raw.items():
        if name == "keys":
            keys = _parse_keys(value, where)
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"{where}unknown section [{name}] (known: {', '.join([*_SECTIONS, 'keys'])})")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}[{name}] must be a table")
        sections[name] = _parse_section(name, cls, value, where)
    return Config(**sections, keys=MappingProxyType(keys), source=source)


def _parse_section(section: str, cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}unknown key {section}.{key} (known: {', '.join(known)})")
        expected = type(f.default)
        # bool is an int subclass in Python; a TOML `true` is not a number here.
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise ConfigError(
                f"{where}{section}.{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        if (section, key) in _POSITIVE and value <= 0:
            raise ConfigError(f"{where}{section}.{key} must be a positive integer, got {value}")
        kwargs[key] = value
    return cls(**kwargs)


def _parse_keys(value: Any, where: str) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}[keys] must be a table of command = key or [keys]")
    out: dict[str, tuple[str, ...]] = {}
    for command, keys in value.items():
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            raise ConfigError(f"{where}keys.{command} must be a key name or a list of key names")
        out[command] = tuple(keys)
    return out
