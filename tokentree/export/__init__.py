"""Export a session's branch tree as text, JSON, Graphviz dot or Markdown.

`loader.load_export_tree` reads a session into plain, immutable data (`ExportTree`); one
module per format turns that into a string. Renderers are pure, deterministic and iterative
(no recursion, no quadratic string building), so 100,000 nodes render in well under a second.
`export_session` is what `tokentree export` calls; `FORMATS` is the one list of formats.
"""

from __future__ import annotations

from tokentree.errors import InputError
from tokentree.export.dot import render_dot
from tokentree.export.json import render_json
from tokentree.export.loader import ExportBranch, ExportNode, ExportTree, gc_paused, load_export_tree
from tokentree.export.markdown import render_markdown
from tokentree.export.text import render_text

__all__ = [
    "FORMATS",
    "ExportBranch",
    "ExportNode",
    "ExportTree",
    "export_session",
    "load_export_tree",
    "render",
    "render_dot",
    "render_json",
    "render_markdown",
    "render_text",
]

FORMATS = {  # name -> renderer; only "text" takes `ascii`, only "json" `top_k`
    "text": render_text,
    "json": render_json,
    "dot": render_dot,
    "markdown": render_markdown,
}
_WITH_TOP = {"json"}  # formats that show each node's top candidates (costly to load)


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r} (choose one of: {', '.join(FORMATS)})")


def _check_top(top: int | None) -> None:
    if top is not None and top < 0:
        raise InputError(f"--top must be 0 or more, not {top}")


def render(tree: ExportTree, fmt: str, *, ascii: bool = False, top: int | None = None) -> str:
    """`ascii` only affects the text tree, `top` (candidates per node) only JSON."""
    _check(fmt)
    _check_top(top)
    if fmt == "text":
        return render_text(tree, ascii=ascii)
    return render_json(tree, top_k=top) if fmt == "json" else FORMATS[fmt](tree)


def export_session(store, session_id: int, fmt: str, *, ascii: bool = False, top: int | None = None) -> str:
    """The session as text / json / dot / markdown; `ascii` only affects the text tree,
    `top` cuts JSON's candidate lists to that many per node (None: every cached one)."""
    _check(fmt)
    _check_top(top)  # before loading: a bad value costs nothing
    with gc_paused():
        tree = load_export_tree(store, session_id, with_top=fmt in _WITH_TOP)
        # The text views draw special tokens marked, as the screen does; JSON keeps the data
        # as it is and says which tokens are special.
        return render(tree if fmt == "json" else tree.marked(), fmt, ascii=ascii, top=top)
