"""Chat sessions: a conversation's turns on screen and a new user turn (m).

A chat session's roots were rendered from messages with the model's chat template; the
session records the template's format (lm/chat.py `chat_format`): the end-of-turn ids (a
stop for fill and sample) and the ids that open a turn (where the prompt pane labels one).
`m` appends, as one undoable group, the template's tokens that close the assistant's turn,
the user's message and the next generation prompt; z folds the turns before the last user
turn to one line each.

Every session, chat or not: when the model attaches, its special tokens are marked in the
store, so every view draws them as what they are (tree/text.py `special_piece`).
"""

from __future__ import annotations

from dataclasses import replace

from tokentree.chat.next_turn import next_turn_text
from tokentree.chat.format import ChatFormat, turns
from tokentree.core.feature import Feature
from tokentree.core.snapshot import Turn
from tokentree.errors import InputError, StaleCommand


class Chat(Feature):
    name = "chat"

    def __init__(self, core) -> None:
        super().__init__(core)
        stored = core.info.chat
        self.format = None if stored is None else ChatFormat(
            end_of_turn=frozenset(stored.get("end_of_turn", ())), openers=frozenset(stored.get("openers", ())),
            closers=frozenset(stored.get("closers", ())))
        self.folded = False
        self._turns: tuple[tuple[int, ...], list[tuple[int, str]]] = ((), [])  # the last ids and their turns

    @property
    def active(self) -> bool:
        return self.format is not None

    # ------------------------------------------------------------------ commands
    def toggle_fold(self) -> None:
        if not self.active:
            self.core.message = "folding is for chat sessions (start one with --chat or a .json conversation)"
            return
        self.folded = not self.folded
        self.core.message = "earlier turns folded (z shows them)" if self.folded else "every turn shown"

    def add_user_turn(self, text: str) -> None:
        """Append the closed assistant turn, the user's `text` and the next generation prompt."""
        core = self.core
        if not self.active:
            core.message = "m adds a user turn in a chat session (start one with --chat or a .json conversation)"
            return
        if not text.strip():
            core.message = "nothing added: the message is empty"
            return
        engine = core.engine
        if engine is None:
            core.message = "cannot add a turn yet: the model is not loaded"
            return
        template = engine.chat_template()
        if template is None:
            core.message = "cannot add a turn: this model has no chat template"
            return
        view = core.view
        with view.reading():
            branch = core.focused_branch()
            last = view.node(branch.node_id).token_id
        ended = view.pieces([last]).get(last, b"").decode("utf-8", "replace") if last in self.format.end_of_turn else None
        try:
            ids = engine.encode_special(next_turn_text(lambda m, gen: template.render(m, add_generation_prompt=gen),
                                                       text, ended_with=ended))
            core.command_many(core.store.append_tokens, branch.id, ids, group=core.next_group())
        except (InputError, StaleCommand) as exc:
            core.message = str(exc)
            return
        core.moved(self)
        core.message = f"added a user turn ({len(ids)} tokens): the assistant's answer comes next (u takes it back)"

    # ------------------------------------------------------------------ hooks
    def stop_ids(self, ids: frozenset[int]) -> frozenset[int]:
        return ids | self.format.end_of_turn if self.active else ids

    def attached(self, engine) -> None:
        core = self.core
        special = frozenset(engine.special_ids())
        if special and special - core.view.special_ids():
            core.store.put_token_bytes(core.vocab_key, engine.token_bytes(special), special=special)
            core.view.specials_changed()
            core.screen.texts_changed()

    def snapshot(self, snap):
        if not self.active or not snap.prompt:
            return snap
        ids = tuple(t.token_id for t in snap.prompt)
        if ids != self._turns[0]:
            pieces = self.core.view.pieces(set(ids))
            self._turns = (ids, turns(ids, self.format, lambda i: pieces.get(i, b"")))
        found = self._turns[1]
        # Folded: every turn before the last user turn is one line; the answer stays in view.
        last_user = max((k for k, (_, role) in enumerate(found) if role == "user"), default=0)
        return replace(snap, turns=tuple(Turn(start, role, folded=self.folded and k < last_user)
                                         for k, (start, role) in enumerate(found)))
