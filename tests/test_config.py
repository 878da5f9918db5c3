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
    assert set(raw) == {*sections, "keys", "structs"}
    for section, values in sections.items():
        expected = {f.name: getattr(values, f.name) for f in fields(values)}
        assert raw[section] == expected, section
    assert raw["keys"] == {}  # every key binding stays the registry's default
    assert raw["structs"] == {}  # the regex constraints are prompts/structs/*.txt
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
        ({"explore": {"fill_tokens": 0}}, "explore.fill_tokens must be a positive integer"),
        ({"explore": {"fill_tokens": 2.5}}, "explore.fill_tokens must be int"),
        ({"explore": {"fill_stop": "eol"}}, 'explore.fill_stop must be "eos" or "line"'),
        ({"explore": {"sample_count": -1}}, "explore.sample_count must be a positive integer"),
        ({"explore": {"fork_entropy": 1.5}}, "explore.fork_entropy must be a number in [0, 1]"),
        ({"explore": {"fork_entropy": float("nan")}}, "explore.fork_entropy must be a number in [0, 1]"),
        ({"sampling": {"temperature": 0}}, "sampling.temperature must be a number > 0"),
        ({"sampling": {"temperature": float("inf")}}, "sampling.temperature must be a number > 0"),
        ({"sampling": {"temperature": True}}, "sampling.temperature must be float"),
        ({"sampling": {"temperature": "hot"}}, "sampling.temperature must be float"),
        ({"sampling": {"top_k": -1}}, "sampling.top_k must be an integer >= 0"),
        ({"sampling": {"top_p": 0.0}}, "sampling.top_p must be a number in (0, 1]"),
        ({"sampling": {"top_p": 1.01}}, "sampling.top_p must be a number in (0, 1]"),
        ({"sampling": {"min_p": 1}}, "sampling.min_p must be a number in [0, 1)"),
        ({"sampling": {"min_p": -0.1}}, "sampling.min_p must be a number in [0, 1)"),
        ({"sampling": {"seed": -2}}, "sampling.seed must be an integer >= 0, or -1"),
        ({"sampling": {"seed": 1.0}}, "sampling.seed must be int"),
    ],
)
def test_bad_values_name_the_key(raw, needle):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert needle in str(info.value)


def test_bad_values_are_one_line():
    with pytest.raises(ConfigError) as info:
        parse_config({"sampling": {"top_p": 2.0}}, source=Path("c.toml"))
    assert "\n" not in str(info.value) and str(info.value).startswith("c.toml: sampling.top_p")


def test_explore_and_sampling_sections():
    cfg = parse_config({"explore": {"fill_tokens": 5, "fill_stop": "line", "sample_count": 2, "fork_entropy": 0},
                        "sampling": {"temperature": 1, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "seed": 7}})
    assert (cfg.explore.fill_tokens, cfg.explore.fill_stop, cfg.explore.sample_count) == (5, "line", 2)
    # A TOML integer where a float is expected is that float.
    assert cfg.explore.fork_entropy == 0.0 and type(cfg.explore.fork_entropy) is float
    assert cfg.sampling.temperature == 1.0 and type(cfg.sampling.temperature) is float
    assert (cfg.sampling.top_k, cfg.sampling.top_p, cfg.sampling.min_p, cfg.sampling.seed) == (40, 0.9, 0.05, 7)
    assert parse_config({"sampling": {"top_p": 1, "min_p": 0}}).sampling == Config().sampling
    # The limits themselves are allowed.
    assert parse_config({"explore": {"fork_entropy": 1.0}, "sampling": {"seed": -1, "top_k": 0}}).explore.fork_entropy == 1


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


@pytest.mark.parametrize(
    "table, needle",
    [
        ('[keys]\nbogus = "x"\n', "[keys] unknown command 'bogus'"),
        ('[keys]\nappend = "ctrl+nope"\n', "[keys] append: unknown key name 'ctrl+nope'"),
        ('[keys]\nappend = "x"\npop = "x"\n', "[keys] key 'x' is bound to both append and pop"),
    ],
)
def test_keys_errors_name_the_file_as_display_errors_do(tmp_path, capsys, table, needle):
    """[keys] is checked against the command registry (tui/keymap.py) after the file is
    parsed; its error still starts with the file, like a [display] error."""
    from tokentree.cli import main

    cfg = tmp_path / "my config.toml"
    cfg.write_text(table)
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tokentree: {cfg}: {needle}") and err.count("\n") == 1, err
    cfg.write_text("[display]\ntokens_to_show = 0\n")
    assert main(["--config", str(cfg)]) == 2
    assert capsys.readouterr().err.startswith(f"tokentree: {cfg}: display.tokens_to_show")
