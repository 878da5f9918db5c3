"""The session's tree read with a second model's outputs: a compare model's cache view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tokentree.core.view import TreeView
from tokentree.outputs import NodeOutput


class ModelView:
    """The session's TreeView, with model outputs read under another fingerprint: nodes,
    token bytes and read transactions are the main view's (one vocabulary, one tree)."""

    def __init__(self, view: TreeView, fingerprint: str) -> None:
        self._main = view
        self.fingerprint = fingerprint
        self._outputs: dict[bytes, NodeOutput] = {}
        self._probs: dict[bytes, float | None] = {}
        self._absent: set[bytes] = set()

    def __getattr__(self, name: str) -> Any:  # everything but outputs: the main view's
        return getattr(self._main, name)

    def use_fingerprint(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint
        self._outputs.clear()
        self._probs.clear()
        self._absent.clear()

    def outputs_for(self, keys: Sequence[bytes]) -> dict[bytes, NodeOutput]:
        want = [k for k in dict.fromkeys(keys) if k not in self._outputs and k not in self._absent]
        if want:
            with self._main.reading() as r:
                got = r.get_outputs(want, self.fingerprint)
            self._outputs.update(got)
            self._absent.update(k for k in want if k not in got)
        return {k: self._outputs[k] for k in keys if k in self._outputs}

    def probs_for(self, keys: Sequence[bytes]) -> dict[bytes, float | None]:
        """key -> the node's token probability under this model (keys with an output only)."""
        want = [k for k in dict.fromkeys(keys) if k not in self._outputs and k not in self._probs
                and k not in self._absent]
        if want:
            with self._main.reading() as r:
                got = r.output_probs(want, self.fingerprint)
            self._probs.update(got)
            self._absent.update(k for k in want if k not in got)
        out: dict[bytes, float | None] = {}
        for k in keys:
            if k in self._outputs:
                out[k] = self._outputs[k].token_prob
            elif k in self._probs:
                out[k] = self._probs[k]
        return out

    def output_stored(self, key: bytes) -> None:
        self._absent.discard(key)

    def analysis_for(self, key: bytes):  # the compare model computes no analyses
        return None
