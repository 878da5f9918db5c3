"""The template text that closes the assistant's turn and opens the next user turn and the
next generation prompt (the `m` key), read off the template itself.

Two renderings of a probe conversation, [user, assistant] without a generation prompt and
[user, assistant, user] with one, differ by exactly what adding a user turn appends, provided
the first is a prefix of the second (a template that rewrites earlier turns when one is
added, as some "thinking" templates do, is refused, never guessed). The text after the
assistant's content in the first closes its turn (ChatML: "<|im_end|>\\n").
"""

from __future__ import annotations

from tokentree.errors import InputError

_ASSISTANT = "\u2063PROBE-ANSWER\u2063"  # invisible separators: no template trims or merges them away
_USER = "\u2063PROBE-QUESTION\u2063"


def next_turn_text(render, user_text: str, *, ended_with: str | None) -> str:
    """The text to append after an assistant's tokens for a new user message `user_text`.
    `render(messages, add_generation_prompt)` renders the chat template; `ended_with`: the
    end-of-turn token's text when the branch already ends with it (then it is not repeated)."""
    closed = render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}], False)
    more = render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT},
                   {"role": "user", "content": user_text}], True)
    if not more.startswith(closed) or closed.count(_ASSISTANT) != 1:
        raise InputError("this model's chat template rewrites earlier turns when a turn is added, "
                         "so a turn cannot be appended to a branch; start a new session with the whole conversation")
    tail = closed[closed.index(_ASSISTANT) + len(_ASSISTANT):]
    if ended_with and tail.startswith(ended_with):
        tail = tail[len(ended_with):]
    return tail + more[len(closed):]
