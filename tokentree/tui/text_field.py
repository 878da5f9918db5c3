"""The one-line text field of the screen (rename, search): an urwid Edit whose home and end
keys go to the ends of its text.
"""

from __future__ import annotations

import urwid

__all__ = ["LineField"]


class LineField(urwid.Edit):
    """A one-line text field (rename, search). Home and end go to the ends of the text,
    even where a long text wraps on screen."""

    def __init__(self, caption: str, text: str = "") -> None:
        super().__init__([("edit_caption", f" {caption} "), " "], text)
        self.set_edit_pos(len(text))

    def keypress(self, size, key):
        if key == "home":
            self.set_edit_pos(0)
            return None
        if key == "end":
            self.set_edit_pos(len(self.edit_text))
            return None
        return super().keypress(size, key)
