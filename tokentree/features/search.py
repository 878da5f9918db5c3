"""Search (/, ctrl n, ctrl p): find a text in every explored path of the session and jump
from match to match; a match no branch stands on gets a branch of its own (once per search)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from tokentree.core.feature import Feature
from tokentree.core.navigate import search_matches


@dataclass
class _Found:
    query: str
    matches: list[int]  # node ids, in tree order
    index: int = -1
    branch_id: int | None = None  # the branch this search made to show its matches


class Search(Feature):
    name = "search"

    def __init__(self, core) -> None:
        super().__init__(core)
        self._found: _Found | None = None

    def search(self, query: str) -> None:
        """Find `query` in the text of every explored path; jump to the first match."""
        query = query.strip()
        if not query:
            self._found = None
            return
        core = self.core
        view = core.view
        with view.reading():
            nodes = view.session_tree()
            pieces = view.pieces(n.token_id for n in nodes)
        self._found = _Found(query, search_matches(nodes, pieces, query))
        if not self._found.matches:
            core.message = f'no match for "{query}" in this session'
            return
        self.step(1)

    def step(self, step: int) -> None:
        """Jump to the next (+1) or previous (-1) match of the last search."""
        found, core = self._found, self.core
        if found is None or not found.matches:
            core.message = "no search: press / to search"
            return
        found.index = (found.index + step) % len(found.matches)
        node_id = found.matches[found.index]
        store = core.store
        branches = core.view.branches()
        at = next((b for b in branches if b.node_id == node_id), None)
        if at is not None:
            if not at.focused:
                core.command(store.focus_branch, at.id)
        elif found.branch_id in {b.id for b in branches}:
            core.command(store.move_branch, found.branch_id, node_id)
            if not next(b for b in branches if b.id == found.branch_id).focused:
                core.command(store.focus_branch, found.branch_id)
        else:  # a branch of its own at the match, made once per search
            group = core.next_group()
            found.branch_id = core.command(store.duplicate_branch, core.focused_branch().id, group=group)
            core.command(store.move_branch, found.branch_id, node_id, group=group)
        core.moved(self)

    # ------------------------------------------------------------------ hooks
    def moved(self, by) -> None:
        if by is not self:
            self._found = None

    def cancel(self) -> bool:
        if self._found is None:
            return False
        self._found = None
        return True

    def screen_state(self, state):
        found = self._found
        if found is None:
            return state
        if not found.matches:
            return replace(state, search=f'search "{found.query}": no match')
        return replace(state, search=f'search "{found.query}": match {found.index + 1} of {len(found.matches)}')
