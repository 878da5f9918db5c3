"""Test hooks inside a real `tokentree` started in a pseudo-terminal: a sitecustomize module,
put first on the child's PYTHONPATH, that patches the explorer when (and only when) one of
these environment variables is set:

* TOKENTREE_TEST_RAISE_IN=NAME: `Explorer.NAME` (or the branches feature's NAME) raises RuntimeError (an exception in a key
  handler, for the terminal-safety tests);
* TOKENTREE_TEST_HOLD_LOAD=PATH: the model load behind the screen waits until PATH exists,
  so "the screen while the model is still loading" is a state a test can wait for and read
  at leisure, not a moment it has to catch (the test creates PATH to let the load go on, or
  never does);
* TOKENTREE_TEST_SHOWN=PATH: every snapshot (what the screen shows, and what the next
  command is built from) writes its session version to PATH, so a test can wait until a
  window has caught up with another window's change before it types into it.

Nothing here changes what the product does; a hook only waits or reports.
"""

from __future__ import annotations

import os
from pathlib import Path

SITECUSTOMIZE = r'''
import os


def _tokentree_test_hooks():
    raise_in = os.environ.get("TOKENTREE_TEST_RAISE_IN")
    hold = os.environ.get("TOKENTREE_TEST_HOLD_LOAD")
    shown = os.environ.get("TOKENTREE_TEST_SHOWN")
    if not (raise_in or hold or shown):
        return
    import tokentree.core.explorer as explorer

    Explorer = explorer.Explorer
    if raise_in:
        def boom(self, *args, **kwargs):
            raise RuntimeError("injected failure in " + raise_in)

        import tokentree.features.branches as branches

        owner = branches.Branches if hasattr(branches.Branches, raise_in) else Explorer  # a feature's, or the core's
        setattr(owner, raise_in, boom)
    if hold:
        import time

        loading_job = Explorer.loading_job

        def held_loading_job(self, load_engine):
            def load():
                while not os.path.exists(hold):
                    time.sleep(0.02)
                return load_engine()

            return loading_job(self, load)

        Explorer.loading_job = held_loading_job
    if shown:
        snapshot = Explorer.snapshot

        def reported_snapshot(self, *args, **kwargs):
            snap = snapshot(self, *args, **kwargs)
            tmp = f"{shown}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(str(snap.version))
            os.replace(tmp, shown)  # a reader sees the old version or the new, never half
            return snap

        Explorer.snapshot = reported_snapshot


_tokentree_test_hooks()
'''


def install(folder: Path) -> Path:
    """Write the sitecustomize module into `folder` (created); returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    return folder


def with_hooks(env: dict[str, str], folder: Path, **variables: str) -> dict[str, str]:
    """`env` with the hooks in `folder` first on PYTHONPATH and the given variables set."""
    install(folder)
    paths = env.get("PYTHONPATH", "").split(os.pathsep)
    if str(folder) not in paths:
        env = dict(env, PYTHONPATH=os.pathsep.join([str(folder), *filter(None, paths)]))
    return dict(env, **variables)


def shown_version(path: Path) -> int | None:
    """The session version a window with TOKENTREE_TEST_SHOWN=path last showed (None: none yet)."""
    try:
        return int(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
