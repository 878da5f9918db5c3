"""A model's tokenizer built from its files as transformers 5's AutoTokenizer builds it, with
the `tokenizers` library alone (no torch, no transformers: milliseconds instead of seconds).

AutoTokenizer does not simply read tokenizer.json. It first picks a class from
tokenizer_config.json, config.json and its own tables (`class_for`); a class with its own
`__init__` (Qwen2Tokenizer, GPT2Tokenizer) rebuilds the tokenizer from the vocabulary and
merges with its own normalizer and pre-tokenizer, keeping only the file's post-processor;
then the special and added tokens are added in a fixed order (`_add_tokens`). With a
tokenizer.json, `add_bos_token`/`add_eos_token` in tokenizer_config.json are ignored: the
post-processor in tokenizer.json decides whether a BOS is added (Llama-style templates).

Only the classes reproduced here are built; anything else raises Unsupported, and the caller
loads the model's own tokenizer instead. The tables below are copies of transformers'
(tests/test_quick_tokens.py checks them against the installed version).
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

GENERIC = "TokenizersBackend"  # tokenizer.json used as it is
BUILT = (GENERIC, "Qwen2Tokenizer", "GPT2Tokenizer")

# transformers' TOKENIZER_MAPPING_NAMES for the causal-LM families read here. A model type not
# listed is not read quickly (its class could not be told).
REGISTERED: dict[str, str | None] = {
    "llama": None, "qwen2": "Qwen2Tokenizer", "qwen3": "Qwen2Tokenizer", "qwen2_moe": "Qwen2Tokenizer",
    "qwen3_moe": "Qwen2Tokenizer", "gpt2": "GPT2Tokenizer", "gemma": "GemmaTokenizer",
    "gemma2": "GemmaTokenizer", "gemma3_text": "GemmaTokenizer", "phi": "GPT2Tokenizer",
    "phi3": "TokenizersBackend", "olmo": "GPTNeoXTokenizer", "olmo2": "TokenizersBackend",
    "smollm3": None, "gpt_neox": "GPTNeoXTokenizer", "opt": "GPT2Tokenizer",
    "starcoder2": "GPT2Tokenizer", "granite": "TokenizersBackend", "stablelm": "TokenizersBackend",
    "gpt_bigcode": "TokenizersBackend", "codegen": "GPT2Tokenizer", "gptj": "GPT2Tokenizer",
}
# transformers' MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS: for these, the registered class wins
# over the class a repository names.
INCORRECT_HUB_CLASS = frozenset({
    "arctic", "chatlm", "ernie4_5", "ernie4_5_moe", "fuyu", "h2ovl_chat", "hyperclovax", "hyperclovax_vlm",
    "hyperclovax_vision_v2", "internlm2", "internlm3", "iquestcoder", "jamba", "llava", "llava_next",
    "minicpm3", "minicpmv", "minimax_m2", "modernbert", "modernbert-decoder", "molmo", "molmo2", "nemotron",
    "nvfp4", "opencua", "openvla", "paddleocr_vl", "phi3", "phi3_v", "phimoe", "qwen2", "qwen3_5",
    "qwen3_5_moe", "qwen3_5_moe_text", "qwen4_exp", "step3_vl", "vipllava", "cohere_asr", "camembertv2-base",
    "siglip2", "smolvlm",
})
# transformers' MODEL_IDS_TO_TOKENIZERS_BACKEND: names loaded with tokenizer.json as it is.
GENERIC_MODEL_IDS = (
    "deepseek-ai/deepseek-r1-distill-llama-*", "deepseek-ai/deepseek-coder-*", "allenai/dolma2-tokenizer",
    "google/umt5-small", "naver-clova-ix/donut-*", "salesforce/blip2-opt-*", "salesforce/blip2-flan-t5-*",
    "salesforce/instructblip-flan-t5-*", "stepfun-ai/step-3.7-*",
)
# Names transformers resolves to the generic class (PreTrainedTokenizer is PythonBackend, read
# as TokenizersBackend when a tokenizer.json is there).
_GENERIC_NAMES = ("TokenizersBackend", "PreTrainedTokenizer", "PythonBackend")
_NOT_SPECIFIC = ("TokenizersBackend", "PythonBackend", "PreTrainedTokenizerFast", "MistralCommonBackend")
NAMED = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
               r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
# Each class's defaults for the named tokens its __init__ takes (used when the config omits them).
_CLASS_DEFAULTS = {
    GENERIC: {},
    "Qwen2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": None, "eos_token": "<|endoftext|>",
                       "pad_token": "<|endoftext|>"},
    "GPT2Tokenizer": {"unk_token": "<|endoftext|>", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                      "pad_token": None},
}


class Unsupported(Exception):
    """These files are not built here; the model's own tokenizer must read them."""


def read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise Unsupported(f"cannot read {path.name}: {exc}") from None
    if not isinstance(value, dict):
        raise Unsupported(f"{path.name} is not a JSON object")
    return value


def class_for(model_type: str | None, tok_config: dict, config: dict, source: str, *, byte_level: bool) -> str:
    """The class AutoTokenizer would pick (transformers' AutoTokenizer.from_pretrained, the
    branches that can apply without remote code), as a name. `byte_level`: tokenizer.json
    mentions "ByteLevel" (transformers looks for exactly that text)."""
    if tok_config.get("auto_map") or config.get("auto_map"):
        raise Unsupported("the model or its tokenizer has its own code")
    if any(fnmatch.fnmatch(source.lower(), p) for p in GENERIC_MODEL_IDS):
        return GENERIC
    if model_type not in REGISTERED:
        raise Unsupported(f"model type {model_type!r} is not read quickly")
    registered = REGISTERED[model_type]
    declared = tok_config.get("tokenizer_class")
    hub = declared or config.get("tokenizer_class")
    if (hub and hub.removesuffix("Fast") == "LlamaTokenizer" and model_type not in INCORRECT_HUB_CLASS
            and byte_level):
        return GENERIC  # a Llama-3 style repository that names the sentencepiece class
    if hub and registered and registered.removesuffix("Fast") != hub.removesuffix("Fast"):
        if registered.removesuffix("Fast") not in _NOT_SPECIFIC:
            chosen = registered if model_type in INCORRECT_HUB_CLASS else hub
            name = _by_name(chosen)
            if name != GENERIC:
                return name
        return GENERIC
    if declared:
        return _by_name(declared)
    if hub:
        return _by_name(hub)
    if registered is None:
        raise Unsupported(f"no tokenizer class is known for model type {model_type!r}")
    return _by_name(registered)


def _by_name(name: str) -> str:
    base = name.removesuffix("Fast")
    if base in _GENERIC_NAMES:
        return GENERIC
    if base in BUILT:
        return base
    raise Unsupported(f"tokenizer class {name} is not read quickly")


def build(directory: Path, cls: str, tok_config: dict, spec: dict) -> Tokenizer:
    """The tokenizer of class `cls` (one of BUILT) from `directory`'s files, encoding exactly
    as AutoTokenizer's `encode(text)` does (special tokens added, no truncation or padding)."""
    init = _init_kwargs(directory, tok_config, spec)
    if cls == GENERIC:
        backend = Tokenizer.from_file(str(directory / "tokenizer.json"))
    else:
        backend = _rebuilt(cls, spec, init)
        post = Tokenizer.from_str(json.dumps(_without_vocab(spec))).post_processor
        if post is not None:
            backend.post_processor = post
    backend.no_truncation()  # encode(text) turns both off for the call
    backend.no_padding()
    defaults = _CLASS_DEFAULTS[cls]
    named = {key: init.get(key, defaults.get(key)) for key in NAMED}
    named.update(init["model_specific"])
    extra = list(init.get("extra_special_tokens") or [])
    if init.get("split_special_tokens"):
        backend.encode_special_tokens = True
    _add_tokens(backend, init["added_tokens_decoder"], named, extra)
    if cls == "Qwen2Tokenizer":  # its __init__ adds every special token once more
        backend.add_tokens([AddedToken(t, special=True) for t in _all_special(named, extra)])
    if backend.post_processor is None:
        # update_post_processor with add_bos_token/add_eos_token off: ids as they are.
        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    return backend


def _init_kwargs(directory: Path, tok_config: dict, spec: dict) -> dict[str, Any]:
    """tokenizer_config.json as PreTrainedTokenizerBase._from_pretrained hands it to the class."""
    if tok_config.get("fix_mistral_regex") or tok_config.get("fast_tokenizer_files"):
        raise Unsupported("a Mistral regex fix or an alternative tokenizer file")
    if (directory / "added_tokens.json").is_file() and "added_tokens_decoder" not in tok_config:
        raise Unsupported("a legacy added_tokens.json")
    init = {k: v for k, v in tok_config.items() if k not in ("tokenizer_class", "add_bos_token", "add_eos_token")}
    if "additional_special_tokens" in init and not init.get("extra_special_tokens"):
        init["extra_special_tokens"] = init.pop("additional_special_tokens")
    model_specific = {k: init.pop(k) for k in list(init)
                      if k not in NAMED and k.endswith("_token") and isinstance(init[k], str)}
    if isinstance(init.get("extra_special_tokens"), dict):
        model_specific.update(init.pop("extra_special_tokens"))
    decoder: dict[int, AddedToken] = {}
    by_text: dict[str, AddedToken] = {}
    if "added_tokens_decoder" in init:
        for idx, token in init["added_tokens_decoder"].items():
            if not isinstance(token, dict):
                raise Unsupported("an added token that is not an object")
            decoder[int(idx)] = by_text[token.get("content")] = _added(token)
    else:
        _merge_special_tokens_map(directory / "special_tokens_map.json", init)
        for token in spec.get("added_tokens") or []:
            fields = {k: v for k, v in token.items() if k != "id"}
            decoder[int(token["id"])] = by_text[fields.get("content")] = _added(fields)
    init["added_tokens_decoder"] = decoder
    init = _convert(init)
    # Other "*_token" values still here (added-token objects, or strings from the legacy map)
    # become model-specific tokens in the base __init__, before the ones taken out above.
    auto = {k: init.pop(k) for k in list(init)
            if k.endswith("_token") and k not in NAMED and isinstance(init[k], (str, AddedToken))}
    init["model_specific"] = {**auto, **_convert(model_specific)}
    for key in NAMED:
        if key in init and by_text and init[key] is not None:
            init[key] = by_text.get(str(init[key]), init[key])
    for key in NAMED:
        if init.get(key) is not None and not isinstance(init[key], (str, AddedToken)):
            raise Unsupported(f"{key} is neither a string nor an added token")
    extra = init.get("extra_special_tokens")
    if extra is not None and (not isinstance(extra, list)
                              or not all(isinstance(t, (str, AddedToken)) for t in extra)):
        raise Unsupported("extra_special_tokens that are neither strings nor added tokens")
    return init


def _added(token: dict) -> AddedToken:
    fields = {k: v for k, v in token.items() if k != "__type"}
    try:
        return AddedToken(**fields)
    except TypeError as exc:
        raise Unsupported(f"an added token transformers would not read: {exc}") from None


def _convert(obj):
    """PreTrainedTokenizerBase.convert_added_tokens(save=False): {"__type": "AddedToken", ...}
    objects become AddedToken, anywhere in the structure."""
    if isinstance(obj, dict) and obj.get("__type") == "AddedToken":
        return _added(obj)
    if isinstance(obj, (list, tuple)):
        return [_convert(o) for o in obj]
    if isinstance(obj, dict):
        return {k: _convert(v) for k, v in obj.items()}
    return obj


def _merge_special_tokens_map(path: Path, init: dict) -> None:
    """The legacy special_tokens_map.json, read only when tokenizer_config.json has no
    added_tokens_decoder: its values win over tokenizer_config.json's."""
    if not path.is_file():
        return
    for key, value in read_json(path).items():
        if isinstance(value, dict) and key != "extra_special_tokens":
            fields = {k: v for k, v in value.items() if k != "special"}
            value = _added({**fields, "special": True})
        elif key == "extra_special_tokens" and isinstance(value, list):
            existing = list(init.get("extra_special_tokens") or [])
            for token in value:
                token = _added({**token, "special": True}) if isinstance(token, dict) else token
                if token not in existing:
                    existing.append(token)
            value = existing
        elif key == "additional_special_tokens" and "extra_special_tokens" in init:
            raise Unsupported("both additional and extra special tokens")
        elif key == "additional_special_tokens":
            key = "extra_special_tokens"  # the base class renames it the same way
        init[key] = value
    if isinstance(init.get("extra_special_tokens"), dict):
        raise Unsupported("named extra special tokens in special_tokens_map.json")


def _without_vocab(spec: dict) -> dict:
    """The file with an empty vocabulary: its post-processor read without parsing the rest."""
    model = dict(spec.get("model") or {})
    kind = model.get("type")
    if kind not in ("BPE", "WordPiece", "WordLevel"):
        raise Unsupported(f"a {kind} model rebuilt by a tokenizer class")
    model["vocab"] = {}
    if kind == "BPE":
        model["merges"] = []
    return {**spec, "model": model, "added_tokens": []}


def _rebuilt(cls: str, spec: dict, init: dict) -> Tokenizer:
    """What Qwen2Tokenizer's and GPT2Tokenizer's __init__ build from the vocabulary and merges."""
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise Unsupported(f"{cls} over a {model.get('type')} model")
    vocab = model.get("vocab")
    if isinstance(vocab, list):
        vocab = {token[0] if isinstance(token, list) else token: i for i, token in enumerate(vocab)}
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges") or []]
    prefix = bool(init.get("add_prefix_space") or False)
    if cls == "Qwen2Tokenizer":
        backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=prefix, use_regex=False),
        ])
    else:
        backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                end_of_word_suffix="", fuse_unk=False))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix)
    backend.decoder = decoders.ByteLevel()
    return backend


def _all_special(named: dict, extra: list) -> list[str]:
    seen: list[str] = []
    for value in [*named.values(), *extra]:
        if value is not None and str(value) not in seen:
            seen.append(str(value))
    return seen


def _add_tokens(backend: Tokenizer, decoder: dict[int, AddedToken], named: dict, extra: list) -> None:
    """TokenizersBackend.__init__'s added and special tokens, in its order: every added token
    of the config (it never finds one already there), then each special token not yet known."""
    to_add: list = [token for _, token in sorted(decoder.items(), key=lambda item: item[0])]
    known = [t.content for _, t in sorted(backend.get_added_tokens_decoder().items())] + [str(t) for t in to_add]
    for value in [*named.values(), *extra]:
        if value is not None and str(value) not in known and value not in to_add:
            to_add.append(value)
    names = [str(t) for t in named.values() if t]
    tokens = []
    for token in to_add:
        if isinstance(token, str):
            token = AddedToken(token, special=True)
        elif not token.special and str(token) in names:
            token.special = True
        tokens.append(token)
    if tokens:
        backend.add_tokens(tokens)
