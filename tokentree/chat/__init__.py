"""Chat conversations: messages read from files or arguments, rendered with a model's chat
template as transformers renders them, and the template's turn format read off its ids.
Pure: no torch, no urwid, no store."""

from tokentree.chat.conversation import (
    ROLES,
    is_conversation_file,
    read_conversation,
    system_text,
    user_message,
    with_system,
)
from tokentree.chat.format import ChatFormat, detect_format, turns


def __getattr__(name: str):
    # Rendering needs jinja2: imported when first used, so exports and the store never load it.
    if name in ("render_template", "template_hash"):
        from tokentree.chat import template

        return getattr(template, name)
    raise AttributeError(f"module 'tokentree.chat' has no attribute {name!r}")

__all__ = [
    "ROLES",
    "ChatFormat",
    "detect_format",
    "is_conversation_file",
    "read_conversation",
    "render_template",
    "system_text",
    "template_hash",
    "turns",
    "user_message",
    "with_system",
]
