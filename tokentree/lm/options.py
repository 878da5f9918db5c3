"""How a local model is loaded: its dtype and device map, from the flags over the [model] table.

No torch here: the values are checked before the database is opened or torch is imported,
so a bad one is a single line at once, not after a slow start.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokentree.errors import InputError

DTYPES = ("float32", "bfloat16", "float16")
# accelerate's placement strategies; "none" keeps the whole model on one device (--device).
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")
NO_DEVICE_MAP = "none"


@dataclass(frozen=True)
class ModelOptions:
    dtype: str = "float32"
    device_map: str | None = None  # None: the whole model on one device


def check_dtype(value: str) -> str:
    if value not in DTYPES:
        raise InputError(f"unknown dtype {value!r}; use {', '.join(DTYPES)}")
    return value


def check_device_map(value: str | None) -> str | None:
    """A strategy name, or None for "none" (one device)."""
    if value is None or value == NO_DEVICE_MAP:
        return None
    if value not in DEVICE_MAPS:
        raise InputError(f"unknown device map {value!r}; use {', '.join(DEVICE_MAPS)} or {NO_DEVICE_MAP}")
    return value


def resolve_dtype(dtype: str | None, bf16: bool, default: str = "float32") -> str:
    """--dtype, with --bf16 as its alias: the two conflict only if they disagree."""
    if dtype is not None:
        check_dtype(dtype)
        if bf16 and dtype != "bfloat16":
            raise InputError(f"--bf16 means --dtype bfloat16 and conflicts with --dtype {dtype}; give one of them")
        return dtype
    return "bfloat16" if bf16 else check_dtype(default)


def model_options(args, config) -> ModelOptions:
    """The options for `args` (the app's flags) and `config` (a ModelConfig): a flag wins over
    the config; an explicit --device means one device, even if the config names a device map."""
    dtype = resolve_dtype(getattr(args, "dtype", None), bool(getattr(args, "bf16", False)), config.dtype)
    device = getattr(args, "device", None)
    flag = getattr(args, "device_map", None)
    if flag is not None:
        device_map = check_device_map(flag)
        if device_map is not None and device:
            raise InputError(f"--device {device} and --device-map {flag} cannot be combined: "
                             "a device map places the model itself; drop one of them")
    else:
        device_map = None if device else check_device_map(config.device_map)
    return ModelOptions(dtype=dtype, device_map=device_map)
