"""The urwid interface: the only package that imports urwid."""
