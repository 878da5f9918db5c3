"""A backend's chat template and the ids of a conversation rendered with it (no torch here).

Every backend offers `chat_template()` (the template, its BOS and EOS strings, or None),
`encode_special(text)` (ids of template text: special tokens parsed, no BOS added, as
transformers' apply_chat_template tokenizes) and `chat_ids(messages)`. The transformers
backend answers `chat_ids` with `apply_chat_template` itself; the others render the template
as transformers does (chat/template.py) and tokenize the text with their own tokenizer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokentree.errors import InputError


@dataclass(frozen=True)
class ChatTemplate:
    template: str
    bos_token: str = ""
    eos_token: str = ""

    @property
    def identity(self) -> str:
        from tokentree.chat.template import template_hash

        return template_hash(self.template)

    def render(self, messages: Sequence[dict], *, add_generation_prompt: bool = True) -> str:
        from tokentree.chat.template import render_template

        return render_template(self.template, list(messages), bos_token=self.bos_token, eos_token=self.eos_token,
                               add_generation_prompt=add_generation_prompt)


def render_ids(template: ChatTemplate, messages: Sequence[dict], encode_special: Callable[[str], list[int]],
               *, add_generation_prompt: bool = True) -> list[int]:
    return encode_special(template.render(messages, add_generation_prompt=add_generation_prompt))


def require_template(backend, model_name: str) -> ChatTemplate:
    """The backend's chat template; InputError (one line) for a model without one: a chat
    prompt is never formatted by guess."""
    template = backend.chat_template()
    if template is not None:
        return template
    if getattr(getattr(backend, "capabilities", None), "remote", False):
        raise InputError("a chat prompt on a server needs --tokenizer NAME_OR_PATH: the served model's "
                         "tokenizer, whose chat template formats the conversation")
    raise InputError(f"{model_name} has no chat template, so a conversation cannot be formatted for it; "
                     "give a plain prompt (without --chat / --system / a .json file)")


def chat_format(backend) -> dict:
    """The session's stored chat format: the template's identity, the end-of-turn ids (a stop
    for fill and sample) and the turn-opening ids (where the prompt pane labels a turn)."""
    from tokentree.chat.format import detect_format

    template = backend.chat_template()
    special = frozenset(backend.special_ids())
    fmt = detect_format(lambda messages, gen: backend.chat_ids(messages, add_generation_prompt=gen), special,
                        lambda i: backend.token_bytes([i])[i])
    return {"template": template.identity, "end_of_turn": sorted(fmt.end_of_turn), "openers": sorted(fmt.openers),
            "closers": sorted(fmt.closers)}
