"""The status bar: the message line (or an open text field), then one line of busy state,
where the numbers come from, the model and the key hint, laid out by priority at its width.
"""

from __future__ import annotations

import urwid

from tokentree.core.snapshot import Snapshot
from tokentree.tui.cells import fit, safe, width_of
from tokentree.tui.compare import compare_status
from tokentree.tui.constraint import constraint_tag

__all__ = ["StatusBar"]


class _StatusLine(urwid.WidgetWrap):
    """The status bar's one line, laid out at its width by priority: the lead (a text
    field's keys) and the busy state first, the key hint always at the right end; between
    them what fits of: where the numbers come from, the model, device, dtype and session.
    The model path shortens first (to its last part), then session, dtype and device go,
    then the origin, then the model's name is cut."""

    SEP = " \u2502 "

    def __init__(self) -> None:
        self.text = urwid.Text("", wrap="clip")
        self.parts: dict | None = None
        self._built_at: tuple | None = None
        super().__init__(urwid.AttrMap(self.text, "status"))

    def set_parts(self, **parts) -> None:
        if parts == self.parts:
            return  # the same line: keep its drawn canvas
        self.parts = parts
        self._built_at = None
        self._invalidate()

    def render(self, size, focus: bool = False):
        if self.parts is not None and self._built_at != size[0]:
            self.text.set_text(self.layout(size[0], **self.parts))
            self._built_at = size[0]
        return super().render(size, focus)

    @classmethod
    def layout(cls, width: int, *, lead, busy, busy_attr, origin, model, details, hint, compare: str = "",
               regex: str = "", regex_attr: str = "status") -> list:
        """`compare`: the compare model's numbers (KL, TV); they go after the origin and give
        way only after the model's details."""
        sep = cls.SEP
        short_model = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or model
        short_origin = {"from cache": "cache", "not computed yet": "not computed"}.get(
            origin, origin.replace("forward pass", "fwd"))
        middles = [[origin, " \u00b7 ".join([model, *details])]]
        middles += [[origin, " \u00b7 ".join([short_model, *details[:keep]])]
                    for keep in range(len(details), -1, -1)]
        middles += [[short_origin, short_model], [short_model]]
        if compare:
            middles = [[*m[:-1], compare, m[-1]] for m in middles] + [[compare], *middles]
        lead_parts = [("edit_caption", lead), " "] if lead else []
        lead_w = width_of(lead) + 1 if lead else 0
        must = lead_w + width_of(busy) + width_of(regex) + width_of(sep) + width_of(hint)  # never left out
        middle = ""
        for parts in middles:
            text = sep.join(parts) + sep
            if must + width_of(text) <= width:
                middle = text
                break
        else:
            room = width - must - width_of(sep)
            if room >= 4:  # the model's name, cut
                middle = fit(short_model, room) + sep
            elif must > width:  # the busy state cut (it stays, if short): the hint still shows
                busy = fit(busy, max(2, width - (must - width_of(busy)))).rstrip()
        used = lead_w + width_of(busy) + width_of(regex) + width_of(sep) + width_of(middle) + width_of(hint)
        tag = [(regex_attr, regex)] if regex else []  # a regex constraint and its state, after busy
        return [*lead_parts, (busy_attr, busy), *tag, sep + middle, " " * max(0, width - used), hint]


class StatusBar(urwid.WidgetWrap):
    """Message line (or the search field while it is open), then: busy, cache or forward
    pass, model, device, dtype, session, hint (see `_StatusLine` for what gives way on a
    narrow screen). A search's position leads the message line."""

    def __init__(self, hint: str, cancel_hint: str = "esc") -> None:
        self.hint = hint
        self.cancel_hint = cancel_hint  # the key that stops a fill, as bound
        self.message = urwid.Text("")
        self._message: object = ""  # the message line's markup as last set
        self.line = _StatusLine()
        self.pile = urwid.Pile([self.message, self.line])
        self.editor: urwid.Widget | None = None
        self.field_hint: str | None = None  # while a text field is open: its keys, shown first
        super().__init__(self.pile)

    def set_editor(self, editor: urwid.Widget | None) -> None:
        """Show a text field in place of the message line (None: the message line again)."""
        self.editor = editor
        top = self.message if editor is None else urwid.AttrMap(editor, "edit")
        self.pile.contents[0] = (top, ("pack", None))
        self.pile.focus_position = 0

    def update(self, snap: Snapshot) -> None:
        st = snap.status
        search = [("search", safe(snap.search)), "  "] if snap.search else []
        if st.error:
            message = search + [("error", safe(st.error))]
        elif search or snap.message:
            message = search + [("message", safe(snap.message or ""))]
        else:
            message = ""
        if message != self._message:  # an unchanged line keeps its drawn canvas
            self.message.set_text(message)
            self._message = message
        if st.origin in ("forward", "request"):  # a local pass, or a server's request
            what = "forward pass" if st.origin == "forward" else "request"
            origin = f"{what} {st.ms:.0f} ms" if st.ms is not None else what
        elif st.origin == "cache":
            origin = "from cache"
        else:
            origin = "not computed yet"
        # Busy state first: it is what a user waits on.
        stop = f" \u00b7 {self.cancel_hint} stops" if st.cancellable else ""
        busy = f" \u23f3 {safe(st.busy)}{stop}\u2026" if st.busy else " idle"
        regex, regex_attr = constraint_tag(snap.constraint)
        self.line.set_parts(
            lead=f" {self.field_hint} " if self.field_hint else "",
            busy=busy, busy_attr="status_busy" if st.busy else "status", origin=origin,
            model=safe(st.model), details=[st.device, st.dtype, f"session {st.session_id}"],
            hint=self.hint + " ", compare=compare_status(snap.compare), regex=regex, regex_attr=regex_attr)
