from tokentree.cli import entry

entry()
