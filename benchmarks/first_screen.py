"""Launch to first screen, as a person feels it: the real `tokentree` command in a pseudo-terminal.

    uv run python benchmarks/first_screen.py                 # the tiny test model, 5 runs
    uv run python benchmarks/first_screen.py --compare       # also with the quick start off (load first)
    uv run python benchmarks/first_screen.py --model DIR --runs 3
    uv run python benchmarks/first_screen.py --model smollm2   # the bundled model (transformers backend)

Each run starts `tokentree --model DIR -i prompt.txt`, reads the screen through a terminal
emulator (pyte), and notes the seconds from spawn until
- "prompt": the prompt's text is on screen;
- "table": the candidate table has rows (`next token · N shown`): the model is loaded and the
  prompt's outputs are computed;
then quits with ctrl+q. Medians over the runs are printed (the min in brackets).
`TOKENTREE_QUICK_START=0` (--slow, or the second half of --compare) is the old flow: load the
model, then draw. Target: prompt on screen within 1.5 s.

As on a person's machine: Python's bytecode is cached (in a temporary PYTHONPYCACHEPREFIX,
filled by a warm-up run, even where PYTHONDONTWRITEBYTECODE is set; --no-bytecode-cache
compiles every module at every start instead), and the database exists already (each mode's
runs share one data dir; the warm-up creates it).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS, COLS = 30, 100
CTRL_Q = "\x11"
PROMPT = "Once upon a time there was a small village by the sea"
TABLE = re.compile(r"next token \u00b7 [1-9]\d* shown")
TARGET_S = 1.5

from tokentree.lm.bundled import is_bundled  # noqa: E402 -- light: no torch


def _tiny_model(where: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_model import build_tiny_model

    return build_tiny_model(where / "tiny", "qwen2")


def run_once(model: Path, prompt: str, work: Path, *, quick: bool, bytecode: bool = True,
             timeout: float = 120.0) -> tuple[float, float]:
    """(seconds to prompt on screen, seconds to a filled table) for one launch; `work` holds
    the data dir, and its parent the bytecode cache."""
    import pexpect
    import pyte

    with tempfile.TemporaryDirectory(prefix="tokentree-first-screen-") as tmp:
        (Path(tmp) / "prompt.txt").write_text(prompt, encoding="utf-8")
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(COLS), LINES=str(ROWS),
                   TOKENTREE_HOME=str(work / "home"), TOKENTREE_QUICK_START="1" if quick else "0",
                   HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if bytecode:
            env["PYTHONPYCACHEPREFIX"] = str(work.parent / "pycache")
            env.pop("PYTHONDONTWRITEBYTECODE", None)
        else:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
        screen = pyte.Screen(COLS, ROWS)
        stream = pyte.ByteStream(screen)
        exe = Path(sys.executable).with_name("tokentree")
        start = time.perf_counter()
        child = pexpect.spawn(str(exe), ["--model", str(model), "-i", "prompt.txt"], env=env, cwd=tmp,
                              dimensions=(ROWS, COLS))
        shown = table = None
        try:
            while table is None:
                if time.perf_counter() - start > timeout:
                    raise TimeoutError(f"no table after {timeout:.0f} s:\n" + "\n".join(screen.display))
                try:
                    stream.feed(child.read_nonblocking(65536, timeout=0.01))
                except pexpect.TIMEOUT:
                    continue
                except pexpect.EOF:
                    raise RuntimeError("tokentree exited:\n" + "\n".join(screen.display)) from None
                now = time.perf_counter() - start
                text = "\n".join(screen.display)
                if shown is None and prompt in text:
                    shown = now
                if TABLE.search(text):
                    if shown is None:
                        raise RuntimeError("the table filled in but the prompt text never showed:\n" + text)
                    table = now
            child.send(CTRL_Q)
            child.expect(pexpect.EOF, timeout=30)
        finally:
            child.close(force=True)
    return shown, table


def measure(model: Path, runs: int, work: Path, *, quick: bool, bytecode: bool = True,
            prompt: str = PROMPT) -> dict[str, list[float]]:
    """Times of `runs` launches after one warm-up launch, all in data dir `work`. Each prompt
    ends differently: a prompt seen before would take its table from the cache."""
    run_once(model, f"{prompt} 0", work, quick=quick, bytecode=bytecode)
    out: dict[str, list[float]] = {"prompt": [], "table": []}
    for i in range(1, runs + 1):
        shown, table = run_once(model, f"{prompt} {i}", work, quick=quick, bytecode=bytecode)
        out["prompt"].append(shown)
        out["table"].append(table)
    return out


def _line(label: str, times: dict[str, list[float]]) -> str:
    def cell(xs: list[float]) -> str:
        return f"{statistics.median(xs):6.2f} s  (min {min(xs):.2f})"

    return f"| {label:<28} | {cell(times['prompt'])} | {cell(times['table'])} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: the tests' tiny Qwen2 model, built here)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-bytecode-cache", dest="bytecode", action="store_false",
                        help="compile every module at every start (as with PYTHONDONTWRITEBYTECODE=1)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--slow", action="store_true", help="quick start off: load the model, then draw")
    mode.add_argument("--compare", action="store_true", help="quick start on, then off")
    args = parser.parse_args(argv)
    if args.model and not (is_bundled(args.model) or Path(args.model).expanduser().is_dir()):
        parser.error(f"--model {args.model}: not a model directory (or smollm2, the bundled model)")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        return _run(args)
    except (RuntimeError, TimeoutError) as exc:  # the app's own message is in it
        print(f"first_screen: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="tokentree-models-") as tmp:
        if args.model and is_bundled(args.model):
            model = args.model  # its checkpoint in TOKENTREE_MODELS (made there first if missing)
        else:
            model = Path(args.model).expanduser().resolve() if args.model else _tiny_model(Path(tmp))
        modes = [("quick start (default)", True), ("load first (QUICK_START=0)", False)]
        if args.slow:
            modes = modes[1:]
        elif not args.compare:
            modes = modes[:1]
        cache = "bytecode cached" if args.bytecode else "no bytecode cache"
        print(f"model: {model}; {args.runs} runs each; {os.cpu_count()} cores; {cache}; seconds from spawn\n")
        print(f"| {'mode':<28} | {'prompt on screen':<22} | {'table filled':<22} |")
        print(f"|{'-' * 30}|{'-' * 24}|{'-' * 24}|")
        results = {}
        for label, quick in modes:
            results[label] = measure(model, args.runs, Path(tmp) / label.split()[0], quick=quick,
                                     bytecode=args.bytecode)
            print(_line(label, results[label]), flush=True)
    quick = results.get(modes[0][0]) if modes[0][1] else None
    if quick is not None:
        first = statistics.median(quick["prompt"])
        verdict = "met" if first <= TARGET_S else "NOT met"
        print(f"\ntarget: prompt on screen <= {TARGET_S} s: {verdict} ({first:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
