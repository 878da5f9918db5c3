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
from tokentree.chat.template import (
    ChatFormat,
    detect_format,
    render_template,
    template_hash,
    turns,
)

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
