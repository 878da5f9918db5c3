"""Colours: every style has a 16-colour entry and a 256-colour entry.

Gradients have LEVELS steps; `level(v)` maps a value in [0, 1] to a step. The palette
tuples are urwid's (name, fg16, bg16, mono, fg256, bg256).
"""

from __future__ import annotations

LEVELS = 8

# Low -> high. Probability: red (unlikely) to green (likely), as background behind the token.
_PROB_256 = ("h52", "h88", "h124", "h130", "h136", "h100", "h64", "h28")
_PROB_16 = ("dark red", "dark red", "dark magenta", "brown", "brown", "dark cyan", "dark green", "dark green")
# Entropy: blue (certain) to magenta/red (uncertain).
_ENT_256 = ("h17", "h18", "h19", "h54", "h90", "h126", "h161", "h160")
_ENT_16 = ("dark blue", "dark blue", "dark blue", "dark magenta", "dark magenta", "dark magenta",
           "dark red", "dark red")
# Attention influence: dark grey (none) to orange (most).
_INF_256 = ("h234", "h236", "h239", "h94", "h130", "h166", "h202", "h208")
_INF_16 = ("black", "black", "black", "brown", "brown", "dark red", "dark red", "dark red")
# Layer heat map: a foreground ramp for '█' cells.
_HEAT_256 = ("h236", "h238", "h24", "h25", "h31", "h38", "h45", "h51")
_HEAT_16 = ("black", "dark gray", "dark blue", "dark blue", "dark cyan", "dark cyan", "light cyan", "white")

# Disagreement between two models (|Δ log p|): grey (agree) to yellow to red (disagree).
_DIS_256 = ("h236", "h238", "h58", "h100", "h136", "h166", "h160", "h124")
_DIS_16 = ("black", "black", "brown", "brown", "brown", "dark red", "dark red", "dark red")

GRADIENTS = {"prob": (_PROB_16, _PROB_256), "ent": (_ENT_16, _ENT_256), "inf": (_INF_16, _INF_256),
             "dis": (_DIS_16, _DIS_256)}


def level(value: float) -> int:
    return max(0, min(LEVELS - 1, int(value * LEVELS)))


def gradient_attr(kind: str, value: float | None) -> str:
    """The style for a value of a gradient ('prob', 'ent', 'inf', 'heat'); 'na' when None."""
    return "na" if value is None else f"{kind}_{level(value)}"


def build_palette() -> list[tuple]:
    palette = [
        # name, fg16, bg16, mono, fg256, bg256
        ("prompt", "light gray", "default", "", "h252", "default"),
        ("appended", "white,underline", "default", "underline", "h231,underline", "default"),
        ("cursor", "light green", "default", "bold", "h82", "default"),
        ("na", "dark gray", "default", "", "h242", "default"),
        ("legend", "dark gray", "default", "", "h245", "default"),
        ("rank", "dark gray", "default", "", "h244", "default"),
        ("token", "white", "default", "", "h231", "default"),
        ("prob_text", "light gray", "default", "", "h250", "default"),
        ("explored", "light green", "default", "bold", "h120", "default"),
        ("header", "dark gray,bold", "default", "bold", "h245,bold", "default"),
        ("selected", "black", "light gray", "standout", "h16", "h153"),
        ("branch", "light gray", "default", "", "h250", "default"),
        ("branch_focus", "black", "light green", "standout", "h16", "h114"),
        ("tree_line", "dark gray", "default", "", "h240", "default"),
        ("tree_text", "light gray", "default", "", "h250", "default"),
        ("tree_current", "light green,bold", "default", "bold", "h120,bold", "default"),
        ("tree_branch", "yellow", "default", "", "h221", "default"),
        ("status", "white", "dark blue", "standout", "h231", "h24"),
        ("status_busy", "yellow,bold", "dark blue", "standout", "h221,bold", "h24"),
        ("message", "yellow", "default", "", "h221", "default"),
        ("error", "light red,bold", "default", "bold", "h203,bold", "default"),
        ("title", "white,bold", "default", "bold", "h231,bold", "default"),
        ("help", "light gray", "black", "", "h252", "h235"),
        ("help_key", "yellow,bold", "black", "bold", "h221,bold", "h235"),
        # Text fields (rename, search): the caption and the text being typed.
        ("edit_caption", "black,bold", "yellow", "standout", "h16,bold", "h221"),
        ("edit", "white", "dark gray", "underline", "h231", "h238"),
        # Sampler column: a survivor's renormalized probability; a filtered-out row is dimmed.
        ("sampled", "light cyan", "default", "bold", "h117", "default"),
        ("filtered", "dark gray", "default", "", "h240", "default"),
        ("search", "light magenta", "default", "bold", "h213", "default"),
        # Comparisons: the compare model's column, the branch a picker points at, a diff's signs.
        ("compare", "light cyan", "default", "", "h116", "default"),
        ("branch_pick", "black", "yellow", "standout", "h16", "h221"),
        ("diff_more", "light green", "default", "", "h114", "default"),
        ("diff_less", "light red", "default", "", "h210", "default"),
        # Regex constraints (r): the state in the table's legend and in the status bar.
        ("regex_live", "light green", "default", "bold", "h120", "default"),
        ("regex_complete", "light cyan,bold", "default", "bold", "h117,bold", "default"),
        ("regex_dead", "light red,bold", "default", "bold", "h203,bold", "default"),
        ("status_regex_live", "light green", "dark blue", "standout", "h120", "h24"),
        ("status_regex_complete", "light cyan,bold", "dark blue", "standout", "h117,bold", "h24"),
        ("status_regex_dead", "light red,bold", "dark blue", "standout", "h210,bold", "h24"),
        # Chat: special and control tokens (never like typed text), a turn's role label.
        ("special", "light magenta", "default", "bold", "h177", "default"),
        ("role", "black,bold", "light cyan", "standout", "h16,bold", "h117"),
        ("role_folded", "light cyan", "default", "", "h117", "default"),
    ]
    for kind, (ramp16, ramp256) in GRADIENTS.items():
        for i in range(LEVELS):
            palette.append((f"{kind}_{i}", "white", ramp16[i], "", "h231", ramp256[i]))
    for i in range(LEVELS):
        palette.append((f"heat_{i}", _HEAT_16[i], "default", "", _HEAT_256[i], "default"))
    return palette


def pick_colors(environ) -> int:
    """256 colours where the terminal says so, else the 16 every terminal has."""
    term = environ.get("TERM", "")
    if "256" in term or environ.get("COLORTERM", "") in ("truecolor", "24bit"):
        return 256
    return 16
