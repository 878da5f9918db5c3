"""Command line: argument parsing, sub-commands and exit codes.

Every user error is one line on stderr and exit code 2; an unexpected error writes its
traceback to the log file and says where. Heavy modules (torch, transformers, urwid) are
imported only by the commands that need them, so `sessions` and `export` start instantly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

from tokentree import __version__
from tokentree.errors import TokentreeError

SUBCOMMANDS = ("sessions", "models", "export", "db")


def build_app_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokentree",
        description="Explore how a language model chooses its words, one token at a time.",
        epilog="Sub-commands: `tokentree sessions`, `tokentree models`, `tokentree export`, `tokentree db` "
               "(each has --help).",
    )
    parser.add_argument("--version", action="version", version=f"tokentree {__version__}")
    parser.add_argument("-i", "--input", action="append", metavar="FILE", default=[],
                        help="prompt file; repeat for several root prompts (default: [prompt] example_prompt); "
                             "a .json or .jsonl file is a conversation, formatted with the model's chat template")
    parser.add_argument("--chat", action="store_true",
                        help="a plain prompt file is one user message, in the model's chat template")
    parser.add_argument("--system", metavar="TEXT|@FILE",
                        help="add a system message to each conversation (implies --chat)")
    parser.add_argument("--model", metavar="NAME_OR_PATH",
                        help="Hugging Face model name or local directory, a .gguf file, or smollm2 (the "
                             "bundled SmolLM2-135M-Instruct); `tokentree models` lists what is here")
    parser.add_argument("--backend", metavar="auto|transformers|llama",
                        help="auto (default): llama.cpp for a .gguf file, transformers otherwise (the bundled "
                             "model too: every view); llama: the bundled model's GGUF on llama.cpp")
    parser.add_argument("--server", metavar="URL",
                        help="explore a model on an OpenAI-compatible server (vLLM, SGLang, llama.cpp); "
                             "--model names the served model")
    parser.add_argument("--tokenizer", metavar="NAME_OR_PATH",
                        help="with --server: the served model's Hugging Face tokenizer, for servers "
                             "without /tokenize or a vocabulary size")
    parser.add_argument("--device", help="torch device (default: cuda, then mps, then cpu)")
    # Plain strings, checked by lm/options.py: a bad value is one line, like a bad config value.
    parser.add_argument("--device-map", metavar="auto|none",
                        help="shard the model over every GPU, then CPU memory, then disk (accelerate); "
                             "also balanced, balanced_low_0, sequential (default: [model] device_map)")
    parser.add_argument("--dtype", metavar="float32|bfloat16|float16",
                        help="weights' dtype; the analysis math is float32 (default: [model] dtype)")
    parser.add_argument("--bf16", action="store_true", help="load the model in bfloat16 (= --dtype bfloat16)")
    parser.add_argument("--layer_prob", "--layer-prob", dest="layer_prob", action="store_true",
                        help="enable per-layer predictions (logit lens)")
    parser.add_argument("--resume", metavar="last|ID", help="reopen a session")
    parser.add_argument("--compare-model", metavar="NAME_OR_URL",
                        help="a second model with the same tokenizer: its probability of each candidate, "
                             "KL and TV at the node, a disagreement view (a local model, a .gguf file, "
                             "a server URL, or with --server another model it serves)")
    _add_common(parser, config=True)
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="allow model code from the hub to run (off by default)")
    return parser


def _add_common(parser: argparse.ArgumentParser, *, config: bool = False) -> None:
    parser.add_argument("--db", metavar="PATH", help="database file (default: in the data dir)")
    if config:
        parser.add_argument("--config", metavar="PATH", help="config file (default: ./config.toml, user config)")


def build_sub_parser() -> argparse.ArgumentParser:
    from tokentree.export import FORMATS  # here, not at the top: the app's start-up never needs it

    parser = argparse.ArgumentParser(prog="tokentree")
    sub = parser.add_subparsers(dest="command", required=True)

    sessions = sub.add_parser("sessions", help="list sessions, newest first")
    sessions.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(sessions)

    models = sub.add_parser("models", help="list the models here: the bundled one, the Hugging Face cache's, "
                                          "GGUF files sessions used")
    models.add_argument("--json", action="store_true", help="machine-readable output")
    _add_common(models)

    export = sub.add_parser("export", help="export a session's branch tree")
    export.add_argument("session", nargs="?", default="last", help="last (default) or a session id")
    export.add_argument("--format", "-f", choices=tuple(FORMATS), default="text")
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    export.add_argument("--ascii", action="store_true", help="ASCII tree lines instead of box drawing")
    export.add_argument("--top", type=int, metavar="N",
                        help="json: at most N candidates per node (default: all that are cached)")
    export.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    export.add_argument("--diff", nargs=2, metavar=("A", "B"),
                        help="instead of the tree: branches A and B (names or ids) token by token from "
                             "their fork point, with log-probabilities, differences and totals (text)")
    _add_common(export)

    db = sub.add_parser("db", help="database maintenance")
    # Not `required`: `tokentree db` alone lists the sub-commands (run_subcommand), where
    # argparse would only say "required: db_command".
    db_sub = db.add_subparsers(dest="db_command", metavar="{path,check,rebuild,backup}")
    for name, help_text in (
        ("path", "print the database path"),
        ("check", "check integrity and that projections equal a replay of the events"),
        ("rebuild", "replay all events into fresh projections"),
    ):
        _add_common(db_sub.add_parser(name, help=help_text))
    backup = db_sub.add_parser("backup", help="write a consistent copy of the database (VACUUM INTO)")
    backup.add_argument("file")
    _add_common(backup)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            return run_subcommand(build_sub_parser().parse_args(argv))
        return run_app(build_app_parser().parse_args(argv))
    except TokentreeError as exc:
        print(f"tokentree: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tokentree: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # noqa: BLE001 -- the last line of defence: log it, say where
        where = log_exception()
        print(f"tokentree: internal error: {exc!r} (details in {where})", file=sys.stderr)
        return 1


def entry() -> None:
    """The `tokentree` command (and `python -m tokentree`): `main`, then an exit that skips the
    interpreter's shutdown. Quitting never waits for a forward pass, so a model thread may
    still be inside torch or llama.cpp (a prefetch, a load); finalizing the interpreter under
    it aborts in their C++ thread pools ("terminate called without an active exception",
    SIGABRT: seen on the real model in 3 quits of 4). By now every event is committed, the
    database closed and the terminal restored."""
    import os

    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    logging.shutdown()
    os._exit(code)


def log_exception() -> Path | str:
    from tokentree.logs import setup_logging

    path = setup_logging()
    logging.getLogger("tokentree").exception("unhandled error")
    return path


DB_COMMANDS = "path, check, rebuild, backup FILE"


def run_app(args: argparse.Namespace) -> int:
    from tokentree.launch import launch

    with _session_hint(args):
        return launch(args)


@contextmanager
def _session_hint(args: argparse.Namespace):
    """An unknown session id also says where the ids are listed."""
    import shlex

    from tokentree.errors import SessionNotFound

    try:
        yield
    except SessionNotFound as exc:
        message = str(exc)
        if not message.startswith("no session "):
            raise
        listing = "tokentree sessions" + (f" --db {shlex.quote(str(args.db))}" if args.db else "")
        raise SessionNotFound(f"{message}; `{listing}` lists them") from None


def run_subcommand(args: argparse.Namespace) -> int:
    from tokentree.paths import db_path

    if args.command == "db" and args.db_command is None:
        raise TokentreeError(f"`tokentree db` needs a sub-command: {DB_COMMANDS} "
                             "(`tokentree db --help` says what each does)")
    if args.command == "db" and args.db_command == "path":
        print(db_path(args.db))
        return 0
    if args.command == "models":  # never creates the database
        from tokentree.model_list import format_models, local_models

        print(format_models(local_models(db_path(args.db)), as_json=args.json))
        return 0
    from tokentree.store import Store

    store = Store.open(db_path(args.db))
    try:
        if args.command == "sessions":
            from tokentree.listing import format_sessions

            print(format_sessions(store.list_sessions(), as_json=args.json))
            return 0
        if args.command == "export":
            with _session_hint(args):
                return run_export(store, args)
        return run_db(store, args)
    finally:
        store.close()


def run_export(store, args: argparse.Namespace) -> int:
    from tokentree.export import export_session
    from tokentree.sessions import resolve_session

    out = Path(args.output).expanduser() if args.output else None
    if out is not None and not args.force and _existing_file(out):  # before the work, and again below
        raise TokentreeError(f"{out} already exists; use --force to overwrite it")
    if args.diff:
        from tokentree.export.diff import export_diff

        if args.format != "text":
            raise TokentreeError(f"--diff prints a text table; --format {args.format} does not apply to it")
        text = export_diff(store, resolve_session(store, args.session), *args.diff)
    else:
        text = export_session(store, resolve_session(store, args.session), args.format, ascii=args.ascii,
                              top=args.top)
    if out is not None:
        # "x" (O_EXCL) unless --force: never overwrite a file that appeared meanwhile. A device
        # or pipe (/dev/stdout, a FIFO) is not a file to protect: written as is.
        mode = "w" if args.force or (out.exists() and not _existing_file(out)) else "x"
        try:
            with open(out, mode, encoding="utf-8") as f:
                f.write(text if text.endswith("\n") else text + "\n")
        except FileExistsError:
            raise TokentreeError(f"{out} already exists; use --force to overwrite it") from None
        except OSError as exc:
            raise TokentreeError(f"cannot write {out}: {exc.strerror}") from None
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def _existing_file(path: Path) -> bool:
    """A regular file (or a link, even a dangling one, to where one would be written)."""
    return path.is_symlink() and not path.exists() or path.is_file()


def run_db(store, args: argparse.Namespace) -> int:
    from tokentree.store import maintenance

    if args.db_command == "check":
        problems = maintenance.check(store)
        for problem in problems:
            print(f"problem: {problem}")
        print("ok" if not problems else f"{len(problems)} problem(s) found")
        return 0 if not problems else 1
    if args.db_command == "rebuild":
        maintenance.rebuild(store)
        print(f"rebuilt projections of {store.path}")
        return 0
    if args.db_command == "backup":
        dest = Path(args.file).expanduser()
        maintenance.backup(store, dest)
        print(f"backed up {store.path} to {dest}")
        return 0
    raise AssertionError(args.db_command)
