"""tokentree: explore how a language model chooses its words, one token at a time."""

__version__ = "0.1.0"
