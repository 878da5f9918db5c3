"""Speculative prefetch: the children of the candidates the user is likely to append."""
