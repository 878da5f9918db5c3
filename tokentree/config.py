"""config.toml -> frozen dataclasses.

Lookup order: --config PATH, ./config.toml, the user config dir, built-in defaults.
Every key is checked: an unknown key or a wrong type is a ConfigError naming the key.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from tokentree.errors import ConfigError
from tokentree.lm.options import DEVICE_MAPS, DTYPES, NO_DEVICE_MAP
from tokentree.paths import user_config_path


@dataclass(frozen=True)
class ModelConfig:
    name: str = "Qwen/Qwen2.5-0.5B"
    # Prompt tokens per forward call when a prompt is read: bounds its memory (a call holds
    # chunk x vocabulary logits) without a second pass.
    prefill_chunk: int = 512
    # Weights and activations; the analysis math is float32 whatever this is.
    dtype: str = "float32"
    # "none": the whole model on one device (--device). "auto": shard it over every GPU, then
    # CPU memory, then disk (accelerate); --device-map on the command line wins.
    device_map: str = NO_DEVICE_MAP


@dataclass(frozen=True)
class PromptConfig:
    example_prompt: str = "prompts/gsm8k.txt"


@dataclass(frozen=True)
class DisplayConfig:
    tokens_to_show: int = 30
    cache_size: int = 100


@dataclass(frozen=True)
class ExploreConfig:
    # Tokens a fill appends (the top candidate each time) and a sample draws per continuation.
    fill_tokens: int = 20
    # Where a fill or a sample stops early: "eos" after an end-of-sequence token, "line" also
    # after a token containing a newline.
    fill_stop: str = "eos"
    # Continuations one sample command draws (each becomes a branch).
    sample_count: int = 4
    # A fork point: a node whose normalized entropy (H / log |V|) is above this.
    fork_entropy: float = 0.3
    # Candidates whose children are computed ahead while you read the table (the selected
    # one first, then by rank); on a server also the requests kept in flight. 0 = off.
    prefetch: int = 4


@dataclass(frozen=True)
class SamplingConfig:
    """A sampler's settings, applied in this order as Hugging Face applies them."""

    temperature: float = 1.0  # > 0
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # nucleus: keep the most likely tokens up to this mass; 1 = off
    min_p: float = 0.0  # keep tokens at least min_p x the top token's probability; 0 = off
    seed: int = -1  # -1: a fresh random seed per draw (recorded); >= 0: this seed


@dataclass(frozen=True)
class ServerConfig:
    """An OpenAI-compatible completion server (`--server URL`): vLLM, SGLang, llama.cpp."""

    url: str = ""  # empty: explore a local model
    model: str = ""  # the served model id; empty: the server's only model
    top_logprobs: int = 20  # candidates asked per request (vLLM needs --max-logprobs >= this)
    timeout: float = 30.0  # seconds per request
    api_key_env: str = ""  # the NAME of an environment variable holding the API key (never the key)


@dataclass(frozen=True)
class LlamaConfig:
    """A GGUF model through llama.cpp in this process (`--model FILE.gguf`)."""

    threads: int = 0  # 0: the machine's physical cores
    # KV cells shared by every cached branch; 0: the model's trained context (memory grows with it).
    n_ctx: int = 8192


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    display: DisplayConfig = field(default_factory=DisplayConfig)
    explore: ExploreConfig = field(default_factory=ExploreConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    llama: LlamaConfig = field(default_factory=LlamaConfig)
    # command name -> keys; validated against the command registry by the TUI.
    keys: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: MappingProxyType({}))
    # regex constraint name -> pattern (r / R), beside prompts/structs/*.txt.
    structs: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    source: Path | None = None

    @property
    def top_k(self) -> int:
        """How many next tokens are cached per node: never fewer than 64."""
        return max(64, self.display.tokens_to_show)


_SECTIONS = {"model": ModelConfig, "prompt": PromptConfig, "display": DisplayConfig,
             "explore": ExploreConfig, "sampling": SamplingConfig, "server": ServerConfig,
             "llama": LlamaConfig}
_POSITIVE = {("display", "tokens_to_show"), ("display", "cache_size"), ("model", "prefill_chunk"),
             ("explore", "fill_tokens"), ("explore", "sample_count"), ("server", "top_logprobs")}
# (section, key) -> (accepts the value, what it must be): checked after the type.
_RANGES = {
    ("model", "dtype"): (lambda v: v in DTYPES, "one of " + ", ".join(f'"{d}"' for d in DTYPES)),
    ("model", "device_map"): (lambda v: v in (NO_DEVICE_MAP, *DEVICE_MAPS),
                              "one of " + ", ".join(f'"{d}"' for d in (NO_DEVICE_MAP, *DEVICE_MAPS))),
    ("explore", "fill_stop"): (lambda v: v in ("eos", "line"), '"eos" or "line"'),
    ("explore", "fork_entropy"): (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    ("sampling", "temperature"): (lambda v: 0.0 < v < math.inf, "a number > 0"),
    ("sampling", "top_k"): (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
    ("sampling", "top_p"): (lambda v: 0.0 < v <= 1.0, "a number in (0, 1] (1 = off)"),
    ("sampling", "min_p"): (lambda v: 0.0 <= v < 1.0, "a number in [0, 1) (0 = off)"),
    ("sampling", "seed"): (lambda v: v >= -1, "an integer >= 0, or -1 for a fresh seed per draw"),
    ("server", "timeout"): (lambda v: 0.0 < v < math.inf, "a number of seconds > 0"),
    ("llama", "threads"): (lambda v: v >= 0, "an integer >= 0 (0 = the physical cores)"),
    ("llama", "n_ctx"): (lambda v: v >= 0, "an integer >= 0 (0 = the model's trained context)"),
    ("explore", "prefetch"): (lambda v: v >= 0, "an integer >= 0 (0 = off)"),
}


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
    structs: dict[str, str] = {}
    for name, value in raw.items():
        if name == "keys":
            keys = _parse_keys(value, where)
            continue
        if name == "structs":
            structs = _parse_structs(value, where)
            continue
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(f"{where}unknown section [{name}] (known: {', '.join([*_SECTIONS, 'keys', 'structs'])})")
        if not isinstance(value, dict):
            raise ConfigError(f"{where}[{name}] must be a table")
        sections[name] = _parse_section(name, cls, value, where)
    return Config(**sections, keys=MappingProxyType(keys), structs=MappingProxyType(structs), source=source)


def _parse_section(section: str, cls: type, values: Mapping[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs = {}
    for key, value in values.items():
        f = known.get(key)
        if f is None:
            raise ConfigError(f"{where}unknown key {section}.{key} (known: {', '.join(known)})")
        expected = type(f.default)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # `temperature = 1` means 1.0
        # bool is an int subclass in Python; a TOML `true` is not a number here.
        if not isinstance(value, expected) or (expected in (int, float) and isinstance(value, bool)):
            raise ConfigError(
                f"{where}{section}.{key} must be {expected.__name__}, got {type(value).__name__} {value!r}"
            )
        if (section, key) in _POSITIVE and value <= 0:
            raise ConfigError(f"{where}{section}.{key} must be a positive integer, got {value}")
        check = _RANGES.get((section, key))
        if check is not None and not check[0](value):  # NaN fails every range
            raise ConfigError(f"{where}{section}.{key} must be {check[1]}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _parse_structs(value: Any, where: str) -> dict[str, str]:
    """[structs]: name = "regular expression". Names and Python-`re` syntax are checked here;
    whether llguidance compiles a pattern is said when the constraints are listed (r / R)."""
    from tokentree.features.constraint import ConstraintError
    from tokentree.features.constraint.catalog import check_name, check_pattern

    if not isinstance(value, dict):
        raise ConfigError(f"{where}[structs] must be a table of name = 'regular expression'")
    out: dict[str, str] = {}
    for name, pattern in value.items():
        if not isinstance(pattern, str):
            raise ConfigError(f"{where}structs.{name} must be a regular expression (text), "
                              f"got {type(pattern).__name__} {pattern!r}")
        try:
            check_name(name)
            check_pattern(pattern, syntax_only=True)
        except ConstraintError as exc:
            raise ConfigError(f"{where}structs.{name}: {exc}") from None
        out[name] = pattern
    return out


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
