"""A GGUF model through llama.cpp in this process (llama-cpp-python): exact next-token numbers
on a CPU, behind the Backend interface.

- backend.py: `LlamaBackend`, the Backend interface on one GGUF file;
- cache.py: llama.cpp sequences as KV-cache lines, and the decode calls that fill them;
- sampling.py: sampled continuations decoded together, one sequence each;
- params.py: context size, chunking, thread count and llama.cpp's context parameters;
- runtime.py: llama_cpp imported with its log routed to the log file, a model file loaded.
"""

from tokentree.lm.llama.backend import NEEDS_TRANSFORMERS, LlamaBackend
from tokentree.lm.llama.cache import LINES, SAMPLE_ROWS, ContextFull
from tokentree.lm.llama.params import DEFAULT_N_CTX, PREFILL_CHUNK, context_params, physical_cores, quant_name
from tokentree.lm.llama.runtime import import_llama

__all__ = [
    "DEFAULT_N_CTX", "LINES", "NEEDS_TRANSFORMERS", "PREFILL_CHUNK", "SAMPLE_ROWS", "ContextFull",
    "LlamaBackend", "context_params", "import_llama", "physical_cores", "quant_name",
]
