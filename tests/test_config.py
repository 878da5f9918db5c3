import tomllib
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

import pytest

from tokentree.config import Config, load_config, parse_config
from tokentree.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_config_sets_every_setting_to_its_default():
    """config.toml documents every setting with its built-in default. Checked setting by
    setting against the dataclasses (no default is copied here), so a new setting config.toml
    lacks, a changed default it still has the old value of, or a stray key, all fail."""
    path = REPO / "config.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    defaults = Config()
    sections = {f.name: getattr(defaults, f.name) for f in fields(Config)
                if is_dataclass(getattr(defaults, f.name))}
    assert set(raw) == {*sections, "keys"}
    for section, values in sections.items():
        expected = {f.name: getattr(values, f.name) for f in fields(values)}
        assert raw[section] == expected, section
    assert raw["keys"] == {}  # every key binding stays the registry's default
    shipped = load_config(path)
    assert shipped.source == path
    assert replace(shipped, source=None) == defaults


def test_top_k_is_at_least_64():
    assert parse_config({"display": {"tokens_to_show": 10}}).top_k == 64
    assert parse_config({"display": {"tokens_to_show": 100}}).top_k == 100


def test_keys_table_accepts_string_or_list():
    cfg = parse_config({"keys": {"append": "l", "pop": ["h", "left"]}})
    assert cfg.keys == {"append": ("l",), "pop": ("h", "left")}


@pytest.mark.parametrize(
    "raw, needle",
    [
        ({"display": {"tokens_to_shw": 3}}, "unknown key display.tokens_to_shw"),
        ({"displey": {}}, "unknown section [displey]"),
        ({"display": {"tokens_to_show": "30"}}, "display.tokens_to_show must be int"),
        ({"display": {"tokens_to_show": True}}, "display.tokens_to_show must be int"),
        ({"display": {"tokens_to_show": -5}}, "display.tokens_to_show must be a positive integer"),
        ({"display": {"cache_size": 0}}, "display.cache_size must be a positive integer"),
        ({"model": {"name": 3}}, "model.name must be str"),
        ({"model": "x"}, "[model] must be a table"),
        ({"keys": {"append": []}}, "keys.append must be a key name"),
    ],
)
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert needle in str(info.value)


def test_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("[display\ntokens_to_show = 3\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_lookup_order(tmp_path, monkeypatch, tokentree_home):
    monkeypatch.chdir(tmp_path)
    assert load_config().source is None  # nothing anywhere: built-in defaults
    tokentree_home.mkdir(parents=True, exist_ok=True)
    (tokentree_home / "config.toml").write_text("[display]\ntokens_to_show = 7\n")
    assert load_config().display.tokens_to_show == 7  # user config dir
    (tmp_path / "config.toml").write_text("[display]\ntokens_to_show = 8\n")
    assert load_config().display.tokens_to_show == 8  # ./config.toml wins over the user's
    explicit = tmp_path / "other.toml"
    explicit.write_text("[display]\ntokens_to_show = 9\n")
    assert load_config(explicit).display.tokens_to_show == 9  # --config wins over all
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
