"""`--compare-model NAME`: the second model the explorer compares the session's model with.

It is loaded the way the first one is (the launcher's _load_engine): a Hugging Face name or local
directory, a `.gguf` file, or a served model:
- `--compare-model http(s)://HOST/v1`: the only model served there;
- with `--server URL` (the session's model is served), a NAME that is not a local path or a
  GGUF file is another model served by that same server.
The same `--device`, `--dtype`, `--device-map` apply to both models.

Its tokenizer must be the session's (the same `vocab_key`): the ids in the tree must mean
the same tokens to both models. That is checked before anything is written and before the
screen opens: from the model's tokenizer files without torch where that can be done (then
the model itself loads in the background, after the main one), else by loading it first.
A different vocabulary is one line and exit code 2.

The comparison is not recorded in the session: it is a way of looking at the tree, like a
prompt view. Its numbers are cached under the compare model's own fingerprint, so resuming
with the same `--compare-model` shows them from the cache at once.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tokentree.errors import InputError


@dataclass
class PreparedCompare:
    """A compare model whose vocabulary was checked: loaded, or loading later (`load`)."""

    name: str
    fingerprint: str
    engine: Any = None
    load: Callable[[], Any] | None = None

    def attach(self, explorer) -> None:
        explorer.features.compare.set_model(self.name, self.fingerprint, engine=self.engine, load=self.load)


def _is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def _local(name: str) -> bool:
    from tokentree.lm.open import gguf_source

    return Path(name).expanduser().exists() or gguf_source(name) is not None


def compare_source(args: argparse.Namespace, config, name: str):
    """(args, config, model name) that launch._load_engine loads the compare model from."""
    served = getattr(args, "server", None) or config.server.url
    if _is_url(name):
        return argparse.Namespace(**{**vars(args), "server": name, "tokenizer": None}), config, ""
    if served and not _local(name):
        return args, config, name  # another model on the same server
    local_config = dataclasses.replace(config, server=dataclasses.replace(config.server, url=None))
    return argparse.Namespace(**{**vars(args), "server": None}), local_config, name


def refuse(name: str, session_model: str) -> InputError:
    return InputError(f"--compare-model {name} has a different vocabulary than {session_model}: "
                      "two models can be compared only when they share one tokenizer")


def prepare_compare(args: argparse.Namespace, config, *, vocab_key: str, session_model: str,
                    load_engine: Callable[..., Any], quick_model: Callable[..., Any]) -> PreparedCompare | None:
    """None without --compare-model; else the checked compare model (InputError for a model
    with another vocabulary; ModelLoadError for one that cannot be found or loaded).
    `load_engine`, `quick_model`: the launcher's own (launch._load_engine, _quick_model)."""
    name = getattr(args, "compare_model", None)
    if not name:
        return None
    cargs, cconfig, model_name = compare_source(args, config, name)
    quick = quick_model(cargs, cconfig, model_name)
    if quick is not None:  # the tokenizer without torch: the model itself loads behind the screen
        if quick.vocab_key != vocab_key:
            raise refuse(name, session_model)
        return PreparedCompare(name, quick.fingerprint,
                               load=lambda: load_engine(cargs, cconfig, model_name, quiet=True))
    engine = load_engine(cargs, cconfig, model_name)  # its progress shows before the screen
    if engine.info.vocab_key != vocab_key:
        engine.close()
        raise refuse(name, session_model)
    return PreparedCompare(name, engine.info.fingerprint, engine=engine)
