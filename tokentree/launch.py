"""Start the explorer: a new session from prompt files, or a resumed one.

The order matters for "never lose data, never write on bad input": config and prompt files
are checked before the database is opened, and the model is loaded (and the prompts
tokenized and checked against its context) before a session is written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokentree.config import Config, load_config
from tokentree.errors import ConfigError, InputError
from tokentree.logs import setup_logging
from tokentree.paths import db_path
from tokentree.prompts import default_prompt_path, read_prompt
from tokentree.sessions import resolve_session


TERMINAL_NEEDED = ("the explorer needs a terminal (stdin and stdout must be a tty); "
                   "use `tokentree export` for scripts")


def require_terminal() -> None:
    """InputError unless stdin and stdout are both terminals: the screen cannot run on a pipe
    or /dev/null (checked before the database is written and before the model loads)."""
    for stream in (sys.stdin, sys.stdout):
        try:
            ok = stream is not None and stream.isatty()
        except (OSError, ValueError):  # closed or detached
            ok = False
        if not ok:
            raise InputError(TERMINAL_NEEDED)


def launch(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    from tokentree.tui.keymap import build_keymap

    try:
        build_keymap(config)  # a bad [keys] table fails now, not after a slow model load
    except ConfigError as exc:
        # The keymap checks [keys] against the command registry and does not know the file.
        if config.source is None or str(exc).startswith(f"{config.source}: "):
            raise
        raise ConfigError(f"{config.source}: {exc}") from None
    setup_logging()
    if args.resume and args.input:
        raise InputError("--resume and --input cannot be combined: a resumed session keeps its prompts")
    if args.resume:
        return _resume(args, config, db_path(args.db))
    return _new_session(args, config, db_path(args.db))


def _new_session(args: argparse.Namespace, config: Config, db: Path) -> int:
    paths = [Path(p) for p in args.input] or [default_prompt_path(config.prompt.example_prompt)]
    texts = [read_prompt(p) for p in paths]
    require_terminal()  # after the inputs' own checks, before anything is written or loaded

    from tokentree.store import Store

    store = Store.open(db)
    try:
        engine = _load_engine(args, config, args.model or config.model.name)
        prompts = []
        for path, text in zip(paths, texts):
            tokens = engine.encode(text)
            if not tokens:
                raise InputError(f"prompt tokenizes to nothing: {path}")
            limit = engine.loaded.context_length
            if limit and len(tokens) >= limit:
                raise InputError(
                    f"prompt is {len(tokens)} tokens, the model's context is {limit}: {path}"
                )
            prompts.append((str(path), tokens))
        session_id = _start_session(store, engine.loaded, prompts)
        loaded = engine.loaded
        explorer = _explorer(store, session_id, config, args, model_name=loaded.name)
        explorer.attach_engine(engine)
        from tokentree.tui.app import run_tui

        return run_tui(explorer, config)
    finally:
        store.close()


def branch_names(sources: list[str]) -> list[str]:
    """One name per root prompt: the file's stem, and `stem (2)`, `stem (3)`, ... for a name
    already taken (the same file given twice, or two files of one name in two folders)."""
    names: list[str] = []
    for source in sources:
        stem = Path(source).stem or "prompt"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem} ({n})"
        names.append(name)
    return names


def _start_session(store, loaded, prompts: list[tuple[str, list[int]]]) -> int:
    """The session, one branch per root prompt and the focus on the FIRST prompt, all in one
    transaction (a crash never leaves half a session). Each new branch takes the focus as it
    is created, so with several prompts the first is focused again at the end."""
    sources = [source for source, _ in prompts]
    with store.writing() as cmd:
        session_id = cmd.start_session(model_name=loaded.name, fingerprint=loaded.fingerprint,
                                       vocab_key=loaded.vocab_key, prompt_sources=sources)
        branch_ids = [cmd.create_branch(session_id, tokens, source=source, name=name)
                      for (source, tokens), name in zip(prompts, branch_names(sources))]
        if len(branch_ids) > 1:
            cmd.focus_branch(session_id, branch_ids[0])
    return session_id


def _resume(args: argparse.Namespace, config: Config, db: Path) -> int:
    from tokentree.store import Store

    if not db.exists():
        raise InputError(f"no sessions to resume: {db} does not exist yet")
    store = Store.open(db)
    try:
        session_id = resolve_session(store, args.resume)
        info = store.session(session_id)
        if not store.branches(session_id):
            raise InputError(f"session {session_id} has no branches (it was cut off while starting); start a new one")
        require_terminal()
        model_name = args.model or info.model_name
        explorer = _explorer(store, session_id, config, args, model_name=model_name)

        def load_engine():
            return _load_engine(args, config, model_name, quiet=True)

        from tokentree.tui.app import run_tui

        return run_tui(explorer, config, load_engine=load_engine)
    finally:
        store.close()


def _explorer(store, session_id: int, config: Config, args: argparse.Namespace, *, model_name: str):
    from tokentree.core.explorer import Explorer

    return Explorer(store, session_id, config=config, layer_prob=args.layer_prob, model_name=model_name)


def _load_engine(args: argparse.Namespace, config: Config, model_name: str, *, quiet: bool = False):
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model

    if not quiet:
        print(f"tokentree: loading {model_name} ...", file=sys.stderr, flush=True)
    loaded = load_model(model_name, device=args.device, bf16=args.bf16,
                        trust_remote_code=args.trust_remote_code)
    return Engine(loaded, top_k=config.top_k, cache_size=config.display.cache_size,
                  prefill_chunk=config.model.prefill_chunk)

