"""How a llama.cpp context is set up for exploring: its size and chunking defaults, the thread
count (physical cores), the model's quantization name, and the context parameters."""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_N_CTX = 8192  # KV cells shared by every cached line (12 KiB each for Qwen2.5-0.5B in F16)
PREFILL_CHUNK = 256  # tokens per decode call of a prompt: [256, 151,936] float32 logits are 148 MiB


def physical_cores() -> int:
    """Physical cores this process may run on: hyper-threads share a core's arithmetic units,
    so a second thread per core slows llama.cpp's matrix products down."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        try:
            import psutil

            return max(1, psutil.cpu_count(logical=False) or 1)
        except ImportError:
            return max(1, os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        topology = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(((topology / "physical_package_id").read_text().strip(),
                       (topology / "core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))


def quant_name(lib, ftype: int) -> str:
    """"F32", "F16", "Q4_K_M", ... for a llama_ftype value."""
    ftype &= ~lib.LLAMA_FTYPE_GUESSED
    for name in dir(lib):
        if name.startswith("LLAMA_FTYPE_") and name != "LLAMA_FTYPE_GUESSED" and getattr(lib, name) == ftype:
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return f"ftype{ftype}"


def context_params(lib, quant: str, *, n_ctx: int, chunk: int, threads: int, sequences: int):
    """llama.cpp context parameters for exploring (the benchmark's bare baseline uses the same)."""
    params = lib.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = params.n_ubatch = chunk
    params.n_seq_max = sequences
    params.kv_unified = True  # lines share one cache: a fork shares its prefix's cells
    params.n_threads = params.n_threads_batch = threads
    params.no_perf = True
    if quant == "F32":
        # Keys and values in float32 too, and no flash attention (on a CPU it computes in
        # float16): the numbers then match the float32 Hugging Face model to ~1e-6.
        params.type_k = params.type_v = lib.GGML_TYPE_F32
        params.flash_attn_type = lib.LLAMA_FLASH_ATTN_TYPE_DISABLED
    return params
