"""tokentree.chat.template: rendering equals transformers' apply_chat_template id for id (for
ChatML, Llama-3 and Phi-3 style templates on tokenizers built here, and the bundled SmolLM2's
own template), and detect_format / turns read each format's turns off its ids."""

from __future__ import annotations

import re
from datetime import datetime
from functools import cache

import pytest
from tiny_model import CORPUS, build_tokenizer
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tokentree.chat import (
    ChatFormat,
    detect_format,
    render_template,
    template_hash,
    turns,
)
from tokentree.chat.template import _compile
from tokentree.errors import InputError

# Qwen2.5-Instruct's template (structure and text as published; the default system message
# is Qwen's own).
QWEN2_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

# Llama-3.1/3.2-Instruct's template: today's date from strftime_now, tools as tojson(indent=4)
# in the first user message, tool results through tojson.
LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
    {%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Phi-3-mini-Instruct's template: the role is the token.
PHI3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{'<|system|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + '<|end|>\n'}}"
    "{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
# The same with Gemma's refusal of system messages: detect_format must do without one.
PHI3_NO_SYSTEM_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    + PHI3_TEMPLATE
)

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                   "<|eot_id|>", "<|python_tag|>"]
PHI3_SPECIALS = ["<s>", "</s>", "<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather <now> & here",
                                         "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}

CHAT = [{"role": "user", "content": "How many clips did Natalia sell?"},
        {"role": "assistant", "content": "Natalia sold 72 clips."},
        {"role": "user", "content": "Caf\u00e9 cr\u00e8me? \u65e5\u672c\u8a9e \U0001F600"}]
SYSTEM = {"role": "system", "content": "You are a lighthouse keeper.\nBe brief."}


def _trained(specials: list[str], bos: str | None, eos: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (as tiny_model.build_tokenizer) with these special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + ["system user assistant ipython"] * 3, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=None)


@cache
def tokenizer(kind: str) -> PreTrainedTokenizerFast:
    if kind == "qwen2":
        tok = build_tokenizer()
        tok.chat_template = QWEN2_TEMPLATE
    elif kind == "llama3":
        tok = _trained(LLAMA3_SPECIALS, "<|begin_of_text|>", "<|eot_id|>")
        tok.chat_template = LLAMA3_TEMPLATE
    else:
        tok = _trained(PHI3_SPECIALS, "<s>", "<|endoftext|>")
        tok.chat_template = PHI3_TEMPLATE if kind == "phi3" else PHI3_NO_SYSTEM_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def smollm2_tokenizer(smollm2) -> PreTrainedTokenizerFast:
    tok = PreTrainedTokenizerFast.from_pretrained(smollm2.checkpoint)
    assert "SmolLM" in tok.chat_template  # the model's own template, with its default system message
    return tok


def rendered_ids(tok: PreTrainedTokenizerFast, messages: list[dict], template: str | None = None,
                 add_generation_prompt: bool = True, **extra) -> list[int]:
    """tokentree's way: render_template, then tokenize the text without adding special tokens."""
    text = render_template(template or tok.chat_template, messages, bos_token=tok.bos_token or "",
                           eos_token=tok.eos_token or "", add_generation_prompt=add_generation_prompt, **extra)
    return tok(text, add_special_tokens=False)["input_ids"]


def transformers_ids(tok: PreTrainedTokenizerFast, messages: list[dict], **kwargs) -> list[int]:
    # transformers 5.x returns a BatchEncoding (return_dict=True is its default).
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
    return list(out["input_ids"])


def special_ids(tok: PreTrainedTokenizerFast) -> frozenset[int]:
    return frozenset(i for i, t in tok.added_tokens_decoder.items() if t.special)


@cache
def _byte_decoder() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: a byte-level token's characters -> its bytes."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1), *range(ord("\xae"), 256)]
    cs = bs[:]
    shifted = 0
    for b in range(256):
        if b not in bs:  # the unprintable bytes map to chr(256), chr(257), ... in order
            bs.append(b)
            cs.append(256 + shifted)
            shifted += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def piece_of(tok: PreTrainedTokenizerFast):
    """A token's bytes (every tokenizer here is byte-level; added tokens are their text)."""
    added = {i: t.content for i, t in tok.added_tokens_decoder.items()}

    def piece(i: int) -> bytes:
        if i in added:
            return added[i].encode("utf-8")
        return bytes(_byte_decoder()[ch] for ch in tok.convert_ids_to_tokens(i))

    return piece


def fmt_of(tok: PreTrainedTokenizerFast) -> ChatFormat:
    return detect_format(lambda m, gen: rendered_ids(tok, m, add_generation_prompt=gen), special_ids(tok), piece_of(tok))


def tid(tok: PreTrainedTokenizerFast, text: str) -> int:
    return tok.convert_tokens_to_ids(text)


# ---------------------------------------------------------------- same ids as transformers


@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
@pytest.mark.parametrize("kind", ["qwen2", "llama3", "phi3"])
def test_render_gives_transformers_ids(kind, system):
    tok = tokenizer(kind)
    messages = [SYSTEM, *CHAT] if system else CHAT
    ids = rendered_ids(tok, messages)
    assert ids == transformers_ids(tok, messages)
    assert render_template(tok.chat_template, messages, bos_token=tok.bos_token or "", eos_token=tok.eos_token) \
        == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert len(set(ids) & special_ids(tok)) >= 2  # the template's own tokens are there, as special ids


@pytest.mark.parametrize("system", [False, True], ids=["no-system", "system"])
def test_render_gives_transformers_ids_for_smollm2(smollm2_tokenizer, system):
    tok = smollm2_tokenizer
    messages = [SYSTEM, *CHAT] if system else CHAT
    ids = rendered_ids(tok, messages)
    assert ids == transformers_ids(tok, messages)
    assert ids[:1] == [tid(tok, "<|im_start|>")]


@pytest.mark.parametrize("kind", ["qwen2", "llama3"])
def test_tool_messages_and_tools_render_as_transformers(kind):
    """The templates' tojson paths: a tool result (Llama-3 JSON-quotes a string result) and a
    tool schema (tojson(indent=4) in Llama-3, plain tojson in Qwen2), with '<' and '&' unescaped."""
    tok = tokenizer(kind)
    messages = [*CHAT, {"role": "assistant", "content": "Let me look."}, {"role": "tool", "content": '{"temp": "<9>"}'}]
    assert rendered_ids(tok, messages) == transformers_ids(tok, messages)
    assert rendered_ids(tok, CHAT, tools=[TOOL]) == transformers_ids(tok, CHAT, tools=[TOOL])
    text = render_template(tok.chat_template, CHAT, bos_token=tok.bos_token or "", tools=[TOOL])
    assert "The weather <now> & here" in text


def test_llama3_date_comes_from_strftime_now():
    text = render_template(LLAMA3_TEMPLATE, CHAT, bos_token="<|begin_of_text|>")
    assert f"Today Date: {datetime.now():%d %b %Y}\n\n" in text
    assert "Today Date: 01 Jan 2000" in render_template(LLAMA3_TEMPLATE, CHAT, date_string="01 Jan 2000")


@pytest.mark.parametrize("kind, before, after", [
    ("qwen2", "'<|im_start|>' + message.role + '\\n'", "'<|im_start|>' + message.role + ' \\n'"),
    ("llama3", "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'",
     "'<|start_header_id|>' + message['role'] + '<|end_header_id|> \\n\\n'"),
])
def test_one_space_in_the_template_changes_the_ids(kind, before, after):
    """The equality above would catch a rendering that is off by a single space."""
    tok = tokenizer(kind)
    assert tok.chat_template.count(before) == 1
    changed = tok.chat_template.replace(before, after)
    assert len(changed) == len(tok.chat_template) + 1
    assert rendered_ids(tok, CHAT, changed) != transformers_ids(tok, CHAT)
    assert template_hash(changed) != template_hash(tok.chat_template)


# ---------------------------------------------------------------- the environment


ODD_TEMPLATES = [
    "{% generation %}[{{ messages[0].content }}]{% endgeneration %}\n{{ messages[1].content }}",
    ("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.role }}{% endfor %}\n"
     "{% for m in messages %}{% if loop.first %}{% continue %}{% endif %}{{ m.role }}{% endfor %}"),
    "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% endfor %}{{ ns.n }}",
    ("{{ dict(a=1) | tojson }}{{ {'b': '<&>\u00e9'} | tojson(indent=2) }}{{ [1, 2] | tojson(separators=(',', ':')) }}"
     "{{ {'z': 1, 'a': 2} | tojson(sort_keys=true) }}{{ '\u00e9' | tojson(ensure_ascii=true) }}"),
    "{{ extra_var }}|{{ tools }}|{{ documents }}|{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}",
    "  {% if add_generation_prompt %}\n  X{% endif %}\n   {%- if true %} Y {% endif %}\n",
    "{{ messages | map(attribute='content') | join(', ') }}{{ messages[-1]['content'] | trim | upper }}",
]


@pytest.mark.parametrize("template", ODD_TEMPLATES)
def test_environment_renders_as_transformers(template):
    """The tag, loop controls, namespace, dict, tojson's options, the variables, trim_blocks and
    lstrip_blocks: each rendered here and by transformers' own render_jinja_template."""
    from transformers.utils.chat_template_utils import render_jinja_template

    messages = [{"role": "user", "content": " a "}, {"role": "assistant", "content": "b"}]
    variables = {"bos_token": "<s>", "eos_token": "</s>", "extra_var": "!"}
    expected = render_jinja_template([messages], chat_template=template, add_generation_prompt=True, **variables)
    assert render_template(template, messages, **variables) == expected[0][0]


def test_strftime_now():
    assert render_template("{{ strftime_now('%Y') }}", []) == str(datetime.now().year)


def test_templates_compile_once():
    assert _compile(QWEN2_TEMPLATE) is _compile(QWEN2_TEMPLATE)


@pytest.mark.parametrize("template, message", [
    ("{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}",
     "the model's chat template failed: Conversation roles must alternate user/assistant/user/assistant/..."),
    ("{% if x %}\n\n{% endfor %}",
     ("the model's chat template failed: Encountered unknown tag 'endfor'. Jinja was looking for the following "
      "tags: 'elif' or 'else' or 'endif'. The innermost block that needs to be closed is 'if'. (template line 3)")),
    ("{{ messages[0].content.nope() }}", "the model's chat template failed: 'str object' has no attribute 'nope'"),
    ("{{ 'a' + 1 }}", "the model's chat template failed: TypeError: can only concatenate str (not \"int\") to str"),
    ("{% set ns = namespace() %}{% set ns._x = 1 %}",
     ("the model's chat template failed: Chat templates cannot store underscore-prefixed attributes on a "
      "namespace, but got '_x'. Please rename the attribute.")),
    ("{{ messages.append(1) }}", "the model's chat template failed: access to attribute 'append' of 'list' object is unsafe."),
])
def test_a_failing_template_is_one_input_error(template, message):
    with pytest.raises(InputError) as info:
        render_template(template, [{"role": "user", "content": "Hi"}])
    assert str(info.value) == message
    assert "\n" not in str(info.value)


def test_template_hash():
    assert re.fullmatch(r"[0-9a-f]{16}", template_hash(QWEN2_TEMPLATE))
    assert template_hash("{{ x }}") == template_hash("{{ x }}")
    assert template_hash("{{ x }}") != template_hash("{{ x }} ")
    import hashlib
    assert template_hash("h\u00e9") == hashlib.sha256("h\u00e9".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- detect_format and turns


def test_smollm2_format_and_turns(smollm2_tokenizer):
    tok = smollm2_tokenizer
    fmt = fmt_of(tok)
    assert fmt.end_of_turn == {tid(tok, "<|im_end|>")}
    assert fmt.openers == {tid(tok, "<|im_start|>")}
    assert fmt.closers == frozenset()
    ids = rendered_ids(tok, [{"role": "user", "content": "Hi"}])
    found = turns(ids, fmt, piece_of(tok))
    assert [role for _, role in found] == ["system", "user", "assistant"]  # SmolLM2 adds its own system message
    assert all(ids[at] == tid(tok, "<|im_start|>") for at, _ in found)
    assert found[0][0] == 0
    ids = rendered_ids(tok, [SYSTEM, *CHAT])
    assert [role for _, role in turns(ids, fmt, piece_of(tok))] == ["system", "user", "assistant", "user", "assistant"]


@pytest.mark.parametrize("kind, end, openers, closers", [
    ("qwen2", ["<|im_end|>"], ["<|im_start|>"], []),
    # not <|begin_of_text|>: one BOS at position 0
    ("llama3", ["<|eot_id|>"], ["<|start_header_id|>"], ["<|end_header_id|>"]),
    # not <s>, nor the eos after the last turn
    ("phi3", ["<|end|>"], ["<|system|>", "<|user|>", "<|assistant|>"], []),
    ("phi3-no-system", ["<|end|>"], ["<|user|>", "<|assistant|>"], []),  # the system probe is refused
])
def test_detect_format(kind, end, openers, closers):
    tok = tokenizer(kind)
    assert fmt_of(tok) == ChatFormat(end_of_turn=frozenset(tid(tok, t) for t in end),
                                     openers=frozenset(tid(tok, t) for t in openers),
                                     closers=frozenset(tid(tok, t) for t in closers))


@pytest.mark.parametrize("kind, system, roles", [
    ("qwen2", False, ["system", "user", "assistant", "user", "assistant"]),  # Qwen's default system message
    ("qwen2", True, ["system", "user", "assistant", "user", "assistant"]),
    ("llama3", False, ["system", "user", "assistant", "user", "assistant"]),  # the dated system header
    ("llama3", True, ["system", "user", "assistant", "user", "assistant"]),
    ("phi3", False, ["user", "assistant", "user", "assistant"]),
    ("phi3", True, ["system", "user", "assistant", "user", "assistant"]),
])
def test_turns(kind, system, roles):
    tok = tokenizer(kind)
    fmt = fmt_of(tok)
    ids = rendered_ids(tok, [SYSTEM, *CHAT] if system else CHAT)
    found = turns(ids, fmt, piece_of(tok))
    assert [role for _, role in found] == roles
    assert all(ids[at] in fmt.openers for at, _ in found)
    # the last turn is the generation prompt: its header is the end of the ids
    assert tok.decode(ids[found[-1][0]:]) == {"qwen2": "<|im_start|>assistant\n", "phi3": "<|assistant|>\n",
                                              "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n"}[kind]


def test_turns_pure_rules():
    """Synthetic ids: a role's text stops at a newline inside a token, at any special id, after
    _ROLE_SCAN tokens; an opener named after a role is that role; else the opener's name.
    Without its closers a Llama-3 style role runs on to the newline."""
    pieces = {1: b"<|im_start|>", 2: b"<|im_end|>", 3: b"<|user|>", 4: b"[INST]", 5: b"<|end_header_id|>",
              10: b"ass", 11: b"istant\nHi", 12: b" tool ", 13: b"x"}
    fmt = ChatFormat(end_of_turn=frozenset({2}), openers=frozenset({1, 3, 4}), closers=frozenset({5}))
    piece = pieces.__getitem__
    assert turns([1, 10, 11, 2], fmt, piece) == [(0, "assistant")]
    assert turns([13, 1, 12, 5, 13], fmt, piece) == [(1, "tool")]
    assert turns([3, 13, 13, 2, 4], fmt, piece) == [(0, "user"), (4, "inst")]  # Phi-4: <|user|> runs into content
    assert turns([1], fmt, piece) == [(0, "im_start")]
    assert turns([1, *[13] * 40], fmt, piece) == [(0, "x" * 16)]
    assert turns([1, 10, 11], ChatFormat(frozenset({2}), frozenset({1})), piece) == [(0, "assistant")]
    assert turns([1, 12, 5, 13, 2], ChatFormat(frozenset({2}), frozenset({1})), piece) == [(0, "tool <|end_header_id|>x")]
    assert turns([], fmt, piece) == []


def test_detect_format_without_special_turn_tokens():
    """A template with no special ids around its turns (plain-text headers): nothing to find."""
    tok = tokenizer("qwen2")
    template = "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}assistant:"
    fmt = detect_format(lambda m, gen: rendered_ids(tok, m, template, gen), special_ids(tok), piece_of(tok))
    assert fmt == ChatFormat(frozenset(), frozenset(), frozenset())
    assert turns(rendered_ids(tok, CHAT, template), fmt, piece_of(tok)) == []
