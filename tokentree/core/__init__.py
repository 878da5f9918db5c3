"""The application core: commands, model-job planning, screen snapshots, tree reads. No urwid, no torch."""
