"""What a feature is: an object with its own state, the commands it declares in the
registry (tokentree/commands.py names it as their target), and the hooks it is told
through. mitmproxy's add-ons are the model: the explorer core only routes.

The hooks, each a no-op here, are the few things features actually need to hear:

- `moved(by)`: the focused branch or node changed. `by` is the feature whose command moved
  it (None: a core command or an undo), so a fill or a search ends on any move but its own.
- `recorded(job, result)`: the main model's outputs for `job` are in the cache (a fill
  appends its next token; queued work goes on).
- `next_task(idle)`: model work this feature wants run on the worker. Asked before the main
  model's planned work (`idle` False: a key's request, a constraint's index), and again when
  the main model has nothing to do (`idle` True: the compare model).
- `screen_state(state)` / `snapshot(snap)`: the screen is being built: a feature adds its
  part to the state the Screen draws from (busy, search line, sampler column) or to the
  finished snapshot (the compare model's column).
- `token_filter(node, out)` / `sampling_filter(path)`: which tokens may follow a node on
  the focused branch (a regex constraint): the table, append and fill use the first, `g`
  the second (a function run in the worker, over the tokens drawn so far).
- `speculate()`: work that may run beside a key's own on a spare worker (a prefetch).
- `cancel()`: esc. True when it stopped something.
- `attached(engine)`: the main model is loaded and attached (a chat session marks its
  special tokens).
- `stop_ids(ids)`: the ids a fill or a sample stops after, given the model's own (a chat
  session adds its end-of-turn token).

A feature reads and writes the session only through the core's public methods (`command`,
`focused_branch`, `view`, `moved`, ...); it never touches the core's or another feature's
private attributes (tests/test_features.py checks).
"""

from __future__ import annotations

from typing import Any


class Feature:
    """A feature of the explorer. Subclasses set `name` (the registry's target for their
    commands) and override the hooks they need."""

    name = ""

    def __init__(self, core) -> None:  # the Explorer (core/explorer.py)
        self.core = core

    def moved(self, by: Feature | None) -> None:
        """The focused branch or node changed (by `by`'s command; None: the core's)."""

    def recorded(self, job, result) -> None:
        """The main model's result for `job` is in the cache."""

    def next_task(self, idle: bool) -> Any:
        """Model work to run now, or None."""
        return None

    def screen_state(self, state):
        return state

    def snapshot(self, snap):
        return snap

    def token_filter(self, node, out) -> Any:
        """What may follow `node` on the focused branch (a constraint Mask), or None."""
        return None

    def sampling_filter(self, path) -> Any:
        """A worker-side function: tokens drawn after `path` -> the allowed next-token
        bitmask (one bit per id, little-endian); None: no restriction; a str: nothing may
        follow `path` (why)."""
        return None

    def speculate(self) -> Any:
        """Speculative model work that may run beside a key's own (a prefetch), or None."""
        return None

    def cancel(self) -> bool:
        return False

    def attached(self, engine) -> None:
        """The main model `engine` was attached."""

    def stop_ids(self, ids: frozenset[int]) -> frozenset[int]:
        return ids
