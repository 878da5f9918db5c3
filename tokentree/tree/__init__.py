"""The exploration tree as text: fork-point segments and the visible text of token bytes.

Shared by the tree pane and every export; no urwid, no torch.
"""
