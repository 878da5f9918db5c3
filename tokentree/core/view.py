"""Read-only tree reads for one session: nodes, children, subtree sizes, outputs, analyses
and token bytes, each read once and kept. It never writes to the store: whoever writes tells
it what changed (`output_stored`, `analysis_stored`, `bytes_known`). No urwid, no torch.

Nodes are immutable and ids never reused, so a Node read once stays true. What can grow is
"which nodes exist": children lists and subtree sizes are valid for the node table up to
`_mark` (its max id), and new nodes are folded in (only their ancestors' sizes change) when a
read sees the mark move.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from typing import Any, NamedTuple

from tokentree.errors import StoreError
from tokentree.outputs import Analysis, NodeOutput
from tokentree.tree.text import special_piece

# New nodes (by anyone) folded into the tree caches one by one; more at once: drop the caches.
_NEW_NODES_INCREMENTAL = 256


class TreeNode(NamedTuple):
    id: int
    parent_id: int | None
    token_id: int


class _SessionNodes(NamedTuple):
    count: int  # the session's node count when read
    nodes: list[TreeNode]
    version: int  # the session version it was checked at


class _LazyReader:
    """A Reader whose read transaction begins at its first read: a block that finds all it
    needs in memory costs no transaction at all."""

    def __init__(self, store) -> None:
        self._store = store
        self._context = None
        self._reader = None

    def __getattr__(self, name: str):
        if self._reader is None:
            self._context = self._store.reading()
            self._reader = self._context.__enter__()
        return getattr(self._reader, name)

    def close(self, exc: BaseException | None) -> None:
        if self._context is not None:
            context, self._context, self._reader = self._context, None, None
            if exc is None:
                context.__exit__(None, None, None)
            else:
                context.__exit__(type(exc), exc, exc.__traceback__)


class TreeView:
    """Store reads for one session, from memory where it can. All methods run on the UI thread."""

    def __init__(self, store, session_id: int, *, vocab_key: str, fingerprint: str) -> None:
        self.store = store
        self.session_id = session_id
        self.vocab_key = vocab_key
        self.fingerprint = fingerprint  # outputs and analyses are cached per model fingerprint
        self._outputs: dict[bytes, NodeOutput] = {}
        self._absent: set[bytes] = set()  # keys known to have no cached output
        self._probs: dict[bytes, float | None] = {}  # key -> token_prob, for keys with output
        self._analysis: dict[bytes, Analysis | None] = {}
        self._bytes: dict[int, bytes] = {}
        self._special: frozenset[int] | None = None
        self._bytes_absent: set[int] = set()  # ids whose bytes are in neither memory nor store
        self._nodes: dict[int, Any] = {}  # id -> Node
        self._links: dict[int, int | None] = {}  # id -> parent id, for every node met
        self._children: dict[int, tuple] = {}  # id -> its children (Nodes, oldest first)
        self._sizes: dict[int, int] = {}  # id -> descendants in the whole node table
        self._mark: int | None = None
        self._path: list = []  # the focused path last built (pop/append splice onto it)
        self._session_nodes: _SessionNodes | None = None
        # One read transaction per entry point: the reader, and what it has read so far.
        self._reader = None
        self._scope: dict[str, Any] | None = None
        self._seen_branches: tuple | None = None  # (session version, its branches)
        # The store's command count when the branches and node mark were last read: they are
        # still the store's until a command is written through it or `recheck` (another window's
        # changes: the screen's follow check). A key press then reads nothing it holds; a command
        # built on a state another process changed meanwhile is refused by the store
        # (expected_version), never applied.
        self._trusted_at: int | None = None
        self.nodes_added = False  # the node table grew since the flag was last cleared

    def use_fingerprint(self, fingerprint: str) -> None:
        """Another model dtype or revision: its outputs and analyses are cached apart."""
        self.fingerprint = fingerprint
        self._outputs.clear()
        self._absent.clear()
        self._analysis.clear()
        self._probs.clear()

    @contextmanager
    def reading(self):
        """Every store read inside runs in ONE read transaction (nested uses join it). Never
        hold it across a store write: it would keep reading the state from before."""
        if self._reader is not None:
            yield self._reader
            return
        reader = _LazyReader(self.store)
        self._reader, self._scope = reader, {}
        try:
            yield reader
        except BaseException as exc:
            self._reader = self._scope = None
            reader.close(exc)
            raise
        self._reader = self._scope = None
        reader.close(None)

    def recheck(self) -> None:
        """The next read asks the store for the session's version (and branches, and new
        nodes) again: after this window's own write, or to see another window's."""
        self._trusted_at = None

    # ------------------------------------------------------------------ nodes
    def branches(self):
        """The live branches, read once per read transaction; the first read also checks
        whether nodes were added since the tree caches were filled."""
        with self.reading() as r:
            branches = self._scope.get("branches")
            if branches is None and self._trusted_at == self.store.commands_begun and self._seen_branches:
                branches = self._scope["branches"] = self._seen_branches[1]
                self._scope["marked"] = True  # no new nodes either: nodes come with events
            if branches is None:
                # Branches are a function of the session's events: same version, same branches.
                version = r.session_version(self.session_id)
                if self._seen_branches is not None and self._seen_branches[0] == version:
                    branches = self._seen_branches[1]
                else:
                    branches = r.branches(self.session_id)
                    self._seen_branches = (version, branches)
                self._scope["branches"] = branches
                self._check_mark()
                self._trusted_at = self.store.commands_begun
            return branches

    def version(self) -> int:
        """The session's event version the branches just read belong to."""
        self.branches()
        return self._seen_branches[0]

    def _check_mark(self) -> None:
        if self._trusted_at == self.store.commands_begun:
            return  # no command since the mark was read (see _trusted_at)
        with self.reading() as r:
            if self._scope.get("marked"):
                return
            self._scope["marked"] = True
            mark = r.max_node_id()
            if self._mark is None or mark == self._mark:
                self._mark = mark
                return
            self.nodes_added = True
            new = r.nodes_after(self._mark, _NEW_NODES_INCREMENTAL) if mark > self._mark else None
            self._mark = mark
            if new is None:
                self._children.clear()
                self._sizes.clear()
                return
            for node in new:
                self._add_node(node)

    def _add_node(self, node) -> None:
        """Fold one new node (ids ascending) into the children lists and subtree sizes."""
        self._remember_nodes((node,))
        parent = node.parent_id
        self._children[node.id] = ()  # a node has no children when it is created
        if parent is None:
            return
        if parent in self._children:
            self._children[parent] += (node,)
        if parent in self._sizes:
            self._sizes[node.id] = 0
        # Every node whose size is known had its whole subtree's links read, so the walk up
        # meets every ancestor with a known size before it meets a missing link.
        links, sizes, up = self._links, self._sizes, parent
        while up is not None:
            if up in sizes:
                sizes[up] += 1
            up = links.get(up)

    def _remember_nodes(self, nodes) -> None:
        for n in nodes:
            self._nodes[n.id] = n
            self._links[n.id] = n.parent_id

    def cached_node(self, node_id: int):
        """The node if it has been read already, else None (reads nothing)."""
        return self._nodes.get(node_id)

    def read_paths(self, node_ids: Iterable[int]) -> None:
        """Read the paths to these nodes, in one statement, so later lookups come from memory."""
        with self.reading() as r:
            self._remember_nodes(r.paths(node_ids).values())

    def node(self, node_id: int):
        node = self._nodes.get(node_id)
        if node is None:
            with self.reading() as r:
                self._remember_nodes(r.nodes([node_id]).values())
            node = self._nodes.get(node_id)
            if node is None:
                raise StoreError(f"no node {node_id}")
        return node

    def path_of(self, node_id: int, *, keep: bool = False) -> list:
        """The nodes from the root to `node_id` (as Store.path_nodes), from memory where it
        can: a walk up to the last focused path, spliced onto it."""
        base, nodes, chain = self._path, self._nodes, []
        nid = node_id
        while True:
            n = nodes.get(nid)
            if n is None:
                self.read_paths([nid])
                n = nodes.get(nid)
                if n is None:
                    raise StoreError(f"no node {nid}")
            if n.depth <= len(base) and base[n.depth - 1].id == n.id:
                path = base[: n.depth]
                break
            chain.append(n)
            if n.parent_id is None:
                path = []
                break
            nid = n.parent_id
        if chain:
            chain.reverse()
            path += chain
        if keep:
            self._path = path
        return path

    def on_path(self, node_id: int, depth: int, end_id: int) -> bool:
        """Whether the node (at `depth`) is on the path from the root to `end_id`."""
        path = self.path_of(end_id)
        return len(path) >= depth and path[depth - 1].id == node_id

    def children_of(self, node_id: int) -> tuple:
        self._check_mark()
        kids = self._children.get(node_id)
        if kids is None:
            with self.reading() as r:
                got = r.children([node_id])[node_id]
            self._remember_nodes(got)
            kids = self._children[node_id] = tuple(got)
        return kids

    def children_counts(self, ids: Sequence[int]) -> dict[int, int]:
        """id -> its number of children (whole node table); the missing lists read in one statement."""
        self._check_mark()
        want = [i for i in ids if i not in self._children]
        if want:
            with self.reading() as r:
                got = r.children(want)
            for i, kids in got.items():
                self._remember_nodes(kids)
                self._children[i] = tuple(kids)
        return {i: len(self._children[i]) for i in ids}

    def subtree_sizes(self, ids: Sequence[int]) -> dict[int, int]:
        """id -> descendants in the whole node table (Store.subtree_sizes), from memory:
        a missing subtree is read once, with every size inside it."""
        self._check_mark()
        sizes = self._sizes
        want = [i for i in ids if i not in sizes and not self._derive_size(i)]
        if want:
            with self.reading() as r:
                links = r.subtree_links(want)
            kids: dict[int | None, list[int]] = {}
            for i, parent in links:
                self._links[i] = parent
                kids.setdefault(parent, []).append(i)
            order, k = [i for i in want if i in self._links], 0
            while k < len(order):  # breadth first: parents before their children
                order.extend(kids.get(order[k], ()))
                k += 1
            for i in reversed(order):
                sizes[i] = sum(sizes[c] + 1 for c in kids.get(i, ()))
        return {i: sizes[i] for i in ids if i in sizes}

    def _derive_size(self, node_id: int) -> bool:
        kids = self._children.get(node_id)
        if kids is None or any(c.id not in self._sizes for c in kids):
            return False
        self._sizes[node_id] = sum(self._sizes[c.id] + 1 for c in kids)
        return True

    def session_tree(self) -> list[TreeNode]:
        """The session's nodes as (id, parent_id, token_id) records, read again only when the
        session has explored a node since (its node set only grows)."""
        with self.reading() as r:
            # Nodes join a session only through its events: while its seq is unchanged, so is the set.
            version = self.version()
            cached = self._session_nodes
            if cached is not None and cached.version == version:
                return cached.nodes
            count = r.session_node_count(self.session_id)
            nodes = cached.nodes if cached is not None and cached.count == count else [
                TreeNode(*row) for row in r.session_tree(self.session_id)]
            self._session_nodes = _SessionNodes(count, nodes, version)
            return nodes

    # ------------------------------------------------------------------ outputs and analyses
    def probs_for(self, keys: Sequence[bytes]) -> dict[bytes, float | None]:
        """key -> token probability for the keys with a cached output (light: no top-K)."""
        outputs, probs, absent = self._outputs, self._probs, self._absent
        want = [k for k in keys if k not in outputs and k not in probs and k not in absent]
        if want:
            with self.reading() as r:
                got = r.output_probs(want, self.fingerprint)
            probs.update(got)
            absent.update(k for k in want if k not in got)
        out = {}
        for k in keys:
            o = outputs.get(k)
            if o is not None:
                out[k] = o.token_prob
            elif k in probs:
                out[k] = probs[k]
        return out

    def outputs_for(self, keys: Sequence[bytes]) -> dict[bytes, NodeOutput]:
        want = [k for k in dict.fromkeys(keys) if k not in self._outputs and k not in self._absent]
        if want:
            with self.reading() as r:
                got = r.get_outputs(want, self.fingerprint)
            self._outputs.update(got)
            self._absent.update(k for k in want if k not in got)
        return {k: self._outputs[k] for k in keys if k in self._outputs}

    def output_stored(self, key: bytes) -> None:
        """An output was just written for `key`: the next read fetches it."""
        self._absent.discard(key)

    def analysis_for(self, key: bytes) -> Analysis | None:
        if key not in self._analysis:
            with self.reading() as r:
                self._analysis[key] = r.get_analysis(key, self.fingerprint)
        return self._analysis[key]

    def analysis_stored(self, key: bytes) -> None:
        """An analysis was just written for `key`: re-read it, since the store merges fields."""
        self._analysis.pop(key, None)

    # ------------------------------------------------------------------ token bytes
    def pieces(self, ids: Iterable[int]) -> dict[int, bytes]:
        """token id -> its bytes, for the ids whose bytes are known."""
        ids = set(ids)
        want = [i for i in ids if i not in self._bytes and i not in self._bytes_absent]
        if want:
            with self.reading() as r:
                got = r.token_bytes(self.vocab_key, want)
            self._bytes.update(got)
            self._bytes_absent.update(i for i in want if i not in got)
        return {i: self._bytes[i] for i in ids if i in self._bytes}

    def special_ids(self) -> frozenset[int]:
        """The vocabulary's special tokens, as the store has them marked."""
        if self._special is None:
            with self.reading() as r:
                self._special = r.special_ids(self.vocab_key)
        return self._special

    def specials_changed(self) -> None:
        self._special = None

    def shown_pieces(self, ids: Iterable[int]) -> dict[int, bytes]:
        """`pieces` as the screen shows them: a special token marked (⟦<|im_end|>⟧), never
        the same characters as typed text. Logic (constraints, saving) uses `pieces`."""
        pieces = self.pieces(ids)
        special = self.special_ids()
        return {i: special_piece(p) if i in special else p for i, p in pieces.items()} if special else pieces

    def known_byte_ids(self) -> frozenset[int]:
        return frozenset(self._bytes)

    def known_bytes_count(self) -> int:
        # Token bytes only ever become known: a larger count may change a text.
        return len(self._bytes)

    def missing_byte_ids(self) -> list[int]:
        """Ids looked up and found in neither memory nor store (the tokenizer must say), sorted."""
        return sorted(self._bytes_absent)

    def bytes_known(self, pieces: dict[int, bytes]) -> None:
        """Token bytes just written to the store by the tokenizer's answer: keep them."""
        self._bytes.update(pieces)
        self._bytes_absent.difference_update(pieces)
