"""Start the explorer: a new session from prompt files, or a resumed one.

The order matters for "never lose data, never write on bad input": config and prompt files
are checked before the database is opened, and the prompts are tokenized and checked against
the model's context before a session is written. A new session reads the tokenizer from the
model's files without torch (lm/quick_tokens.py), so its prompt is on screen at once while
the model loads in the background; where that cannot be done, the model loads first.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from tokentree.config import Config, load_config
from tokentree.errors import ConfigError, InputError, ModelLoadError
from tokentree.logs import setup_logging
from tokentree.paths import db_path
from tokentree.prompts import default_prompt_path, read_prompt
from tokentree.sessions import resolve_session

log = logging.getLogger(__name__)
QUICK_START_ENV = "TOKENTREE_QUICK_START"  # "0": load the model before the first screen

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
    from tokentree.lm.options import model_options

    model_options(args, config.model)  # a bad --dtype / --device-map: one line now, before any write
    from tokentree.lm.choice import check_backend, target

    server = getattr(args, "server", None) or config.server.url
    if check_backend(getattr(args, "backend", None)) != "auto" and server:
        raise InputError("--backend picks a local backend; a --server model runs on the server")
    if args.model and not server:
        target(args.model, getattr(args, "backend", None))  # --model smollm2 not installed, a bad pair: now
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
    if args.resume and (getattr(args, "chat", False) or getattr(args, "system", None) is not None):
        raise InputError("--chat and --system start a new session; a resumed session keeps its prompts")
    if args.resume:
        return _resume(args, config, db_path(args.db))
    return _new_session(args, config, db_path(args.db))


def _new_session(args: argparse.Namespace, config: Config, db: Path) -> int:
    paths = [Path(p) for p in args.input] or [default_prompt_path(config.prompt.example_prompt)]
    inputs = [read_root(p, chat=getattr(args, "chat", False), system=getattr(args, "system", None)) for p in paths]
    require_terminal()  # after the inputs' own checks, before anything is written or loaded
    from tokentree.store import Store

    store = Store.open(db)  # a bad database: one line before a model is chosen or made
    try:
        model_name, note = _choose_model(args, config)
        _prepare_first(args, config, model_name)
        quick = _quick_model(args, config, model_name)
        load_engine = None
        if quick is None:  # load first, then draw
            engine = _load_engine(args, config, model_name)
            prompts, chat = _root_prompts(inputs, engine, name=engine.info.name, limit=engine.info.context_length)
            compare = prepare_compare(args, config, vocab_key=engine.info.vocab_key, session_model=engine.info.name)
            session_id = _start_session(store, engine.info, prompts, chat=chat)
            explorer = _explorer(store, session_id, config, args, model_name=engine.info.name)
            explorer.attach_engine(engine)
        else:  # draw now; the table fills in when the model has loaded
            prompts, chat = _root_prompts(inputs, quick, name=quick.name, limit=quick.context_length)
            compare = prepare_compare(args, config, vocab_key=quick.vocab_key, session_model=quick.name)
            # The prompt's token bytes too, so it reads as text before the model is there (its
            # special tokens marked as such).
            special = quick.special_ids()
            store.put_token_bytes(quick.vocab_key, quick.token_bytes({i for p in prompts for i in p.tokens} | special),
                                  special=special)
            session_id = _start_session(store, quick, prompts, chat=chat)
            explorer = _explorer(store, session_id, config, args, model_name=quick.name)

            def load_engine():
                engine = _load_engine(args, config, model_name, quiet=True)
                return _same_tokens(engine, list(zip(inputs, prompts)))

        if compare is not None:
            compare.attach(explorer)
        if note:
            explorer.message = note
        from tokentree.tui.app import run_tui

        return run_tui(explorer, config, load_engine=load_engine)
    finally:
        store.close()


@dataclass(frozen=True)
class RootInput:
    """A root prompt as read from its file: plain text, or the messages of a conversation."""

    source: str
    text: str | None = None
    messages: tuple[dict[str, str], ...] | None = None


@dataclass(frozen=True)
class RootPrompt:
    source: str
    tokens: list[int]
    messages: tuple[dict[str, str], ...] | None = None


def read_root(path: Path, *, chat: bool = False, system: str | None = None) -> RootInput:
    """A prompt file as a root: a .json / .jsonl conversation, a plain file as one user
    message with --chat (or --system), else its text. InputError (one line) for a bad file."""
    from tokentree.chat import conversation

    if conversation.is_conversation_file(path):
        messages = conversation.read_conversation(path)
    elif chat or system is not None:
        messages = conversation.user_message(read_prompt(path))
    else:
        return RootInput(str(path), text=read_prompt(path))
    if system is not None:
        messages = conversation.with_system(messages, conversation.system_text(system), str(path))
    return RootInput(str(path), messages=tuple(messages))


def _choose_model(args: argparse.Namespace, config: Config) -> tuple[str, str | None]:
    """(the model of a new session, a one-line note when the configured default cannot be
    had and the bundled model stands in: printed now and shown in the status line)."""
    name = requested_model(args, config)
    if getattr(args, "server", None) or config.server.url:
        return name, None
    from tokentree.lm.choice import choose_default

    name, note = choose_default(name, explicit=bool(args.model), code=args.trust_remote_code)
    if note:
        print(f"tokentree: {note}", file=sys.stderr, flush=True)
    return name, note


def _prepare_first(args: argparse.Namespace, config: Config, model_name: str) -> None:
    """What must be made before the screen opens, with its progress on stderr: the bundled
    model's transformers checkpoint (lm/dequantize.py), once."""
    if getattr(args, "server", None) or config.server.url or not model_name:
        return
    from tokentree.lm.choice import target

    chosen = target(model_name, getattr(args, "backend", None))
    if chosen.gguf is not None:
        from tokentree.lm.dequantize import ensure_checkpoint

        ensure_checkpoint(chosen.gguf, label=chosen.label or model_name)


def _root_prompts(inputs: list[RootInput], loaded, *, name: str, limit: int | None) -> tuple[list[RootPrompt], dict | None]:
    """The roots' ids, and the chat format where any root is a conversation; InputError for
    a prompt that is empty in tokens or too long, or a conversation for a model without a
    chat template."""
    prompts, chat = [], None
    for root in inputs:
        if root.messages is not None:
            from tokentree.lm.chat import chat_format, require_template

            require_template(loaded, name)
            tokens = loaded.chat_ids(root.messages)
            chat = chat or chat_format(loaded)
        else:
            tokens = loaded.encode(root.text)
        if not tokens:
            raise InputError(f"prompt tokenizes to nothing: {root.source}")
        if limit and len(tokens) >= limit:
            raise InputError(f"prompt is {len(tokens)} tokens, the model's context is {limit}: {root.source}")
        prompts.append(RootPrompt(root.source, tokens, root.messages))
    return prompts, chat


def _quick_model(args: argparse.Namespace, config: Config, model_name: str):
    """The model's tokenizer, fingerprint and context read from its files without torch, or
    None where that cannot be done (a server, a GGUF file, model code, a model not in the
    cache, a tokenizer not reproduced there, TOKENTREE_QUICK_START=0): then it loads first.
    So does an explicit --device other than cpu: only torch can say it is there, and a bad
    one must be refused before a session is written."""
    if os.environ.get(QUICK_START_ENV, "").strip() == "0":
        return None
    if getattr(args, "server", None) or config.server.url or args.trust_remote_code or not model_name:
        return None
    if getattr(args, "device", None) not in (None, "cpu"):
        return None
    import dataclasses

    from tokentree.lm.choice import target
    from tokentree.lm.dequantize import checkpoint_dir, ready
    from tokentree.lm.options import model_options
    from tokentree.lm.quick_tokens import NotQuick, quick_model

    chosen = target(model_name, getattr(args, "backend", None))
    if chosen.llama:
        return None
    name = chosen.name
    if chosen.gguf is not None:  # its checkpoint, if it has been made
        name = str(checkpoint_dir(chosen.gguf))
        if not ready(Path(name)):
            return None
    try:
        quick = quick_model(name, dtype=model_options(args, config.model).dtype)
    except NotQuick as exc:
        log.info("model %s loads before the first screen: %s", model_name, exc)
        return None
    return dataclasses.replace(quick, name=chosen.label) if chosen.label else quick


def _same_tokens(engine, prompts: list[tuple[RootInput, RootPrompt]]):
    """The loaded model, if its own tokenizer gives the ids the session was started with and
    its context holds them; else ModelLoadError, which the status line shows while the engine
    is dropped: no numbers are ever recorded for ids the model would not have made."""
    limit = engine.info.context_length
    for root, prompt in prompts:
        source, tokens = prompt.source, prompt.tokens
        ids = engine.chat_ids(root.messages) if root.messages is not None else engine.encode(root.text)
        if ids != tokens:
            problem = f"its own tokenizer splits {source} differently than the quick start did"
        elif limit and len(tokens) >= limit:
            problem = f"{source} is {len(tokens)} tokens, the model's context is {limit}"
        else:
            continue
        engine.close()
        raise ModelLoadError(f"{problem}; this session can be browsed, not extended "
                             f"({QUICK_START_ENV}=0 loads the model before the first screen)")
    return engine


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


def _start_session(store, loaded, prompts: list[RootPrompt], *, chat: dict | None = None) -> int:
    """The session, one branch per root prompt and the focus on the FIRST prompt, all in one
    transaction (a crash never leaves half a session). Each new branch takes the focus as it
    is created, so with several prompts the first is focused again at the end."""
    sources = [p.source for p in prompts]
    with store.writing() as cmd:
        session_id = cmd.start_session(model_name=loaded.name, fingerprint=loaded.fingerprint,
                                       vocab_key=loaded.vocab_key, prompt_sources=sources, chat=chat)
        branch_ids = [cmd.create_branch(session_id, p.tokens, source=p.source, name=name, messages=p.messages)
                      for p, name in zip(prompts, branch_names(sources))]
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

        _download_first(args, config, model_name)  # its progress shows before the screen opens
        try:
            _prepare_first(args, config, model_name)
        except ModelLoadError:
            pass  # the cached tree opens all the same; the load behind the screen says what is wrong
        compare = prepare_compare(args, config, vocab_key=info.vocab_key, session_model=info.model_name)
        if compare is not None:
            compare.attach(explorer)
        from tokentree.tui.app import run_tui

        return run_tui(explorer, config, load_engine=load_engine)
    finally:
        store.close()


def prepare_compare(args: argparse.Namespace, config: Config, *, vocab_key: str, session_model: str):
    """--compare-model, checked against the session's vocabulary (compare_model.py)."""
    from tokentree.compare_model import prepare_compare as prepare

    return prepare(args, config, vocab_key=vocab_key, session_model=session_model, load_engine=_load_engine,
                   quick_model=_quick_model)


def _explorer(store, session_id: int, config: Config, args: argparse.Namespace, *, model_name: str):
    from tokentree.core.explorer import Explorer

    return Explorer(store, session_id, config=config, layer_prob=args.layer_prob, model_name=model_name)


def requested_model(args: argparse.Namespace, config: Config) -> str:
    """The model a new session asks for: on a server the served id (empty: its only one)."""
    if getattr(args, "server", None) or config.server.url:
        return args.model or config.server.model
    return args.model or config.model.name


def _load_engine(args: argparse.Namespace, config: Config, model_name: str, *, quiet: bool = False):
    server = getattr(args, "server", None) or config.server.url
    if server:
        return _connect_server(args, config, server, model_name, quiet=quiet)
    from tokentree.lm.choice import target
    from tokentree.lm.open import open_gguf

    chosen = target(model_name, getattr(args, "backend", None))
    if chosen.llama:  # a .gguf file, REPO:FILE.gguf or the bundled GGUF: llama.cpp in process
        return open_gguf(chosen.name, config, quiet=quiet, label=chosen.label)
    from tokentree.lm.engine import Engine
    from tokentree.lm.loader import load_model
    from tokentree.lm.options import model_options

    label = chosen.label or model_name
    source = chosen.name
    if chosen.gguf is not None:
        from tokentree.lm.dequantize import ensure_checkpoint

        source = str(ensure_checkpoint(chosen.gguf, label=label, progress=not quiet))
    if not quiet:
        print(f"tokentree: loading {label} ...", file=sys.stderr, flush=True)
    options = model_options(args, config.model)
    loaded = load_model(source, device=args.device, dtype=options.dtype, device_map=options.device_map,
                        trust_remote_code=args.trust_remote_code, progress=not quiet)
    loaded.name = label
    return Engine(loaded, top_k=config.top_k, cache_size=config.display.cache_size,
                  prefill_chunk=config.model.prefill_chunk)


def _download_first(args: argparse.Namespace, config: Config, model_name: str) -> None:
    """A hub model missing from the cache downloads now, with its progress on stderr, before
    the screen opens. A failure is left to the load behind the screen, which shows it there."""
    from tokentree.lm import bundled
    from tokentree.lm.open import gguf_source

    if getattr(args, "server", None) or config.server.url or bundled.is_bundled(model_name) or gguf_source(model_name):
        return
    from tokentree.errors import ModelLoadError
    from tokentree.lm.download import download_model

    try:
        download_model(model_name, code=args.trust_remote_code)
    except ModelLoadError:
        pass


def _connect_server(args: argparse.Namespace, config: Config, url: str, model_name: str, *, quiet: bool):
    """The served model behind `url`; `model_name` empty: the server's only model."""
    from tokentree.lm.server import connect

    if not quiet:
        print(f"tokentree: connecting to {url} ...", file=sys.stderr, flush=True)
    cfg = config.server
    return connect(url, model=model_name, top_logprobs=cfg.top_logprobs, timeout=cfg.timeout,
                   api_key_env=cfg.api_key_env, tokenizer=getattr(args, "tokenizer", None),
                   top_k=config.top_k, parallel=max(1, config.explore.prefetch))
