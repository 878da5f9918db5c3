"""The explorer's features, each an object with its own state, its commands (named as
targets in tokentree/commands.py) and the hooks of core/feature.py. `standard.FEATURES`
is the set a session runs."""
