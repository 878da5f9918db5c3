"""The branch list's commands: switch (w/s), duplicate (d), remove (a), reset (ctrl r),
rename (n) and save the branch's text (x). Each is one recorded event."""

from __future__ import annotations

from pathlib import Path

from tokentree.core.feature import Feature
from tokentree.prompts import save_prompt


class Branches(Feature):
    name = "branches"

    def switch_branch(self, step: int) -> None:
        branches = self.core.view.branches()
        i = next((k for k, b in enumerate(branches) if b.focused), 0)
        j = (i + step) % len(branches)
        if j != i:
            self.core.command(self.core.store.focus_branch, branches[j].id)
            self.core.moved(self)

    def duplicate_branch(self) -> None:
        new_id = self.core.command(self.core.store.duplicate_branch, self.core.focused_branch().id)
        self.core.forget_queued_appends()  # the same node, so the selection stays
        name = next((b.name for b in self.core.view.branches() if b.id == new_id), "")
        self.core.message = f"duplicated the branch as {name}" if name else "duplicated the branch"

    def remove_branch(self) -> None:
        with self.core.view.reading():
            if len(self.core.view.branches()) <= 1:
                self.core.message = "cannot remove the last branch"
                return
            branch = self.core.focused_branch()
        self.core.command(self.core.store.remove_branch, branch.id)
        self.core.moved(self)
        self.core.message = f"removed {branch.name} from the list (its nodes stay in the tree; u undoes)"

    def reset_branch(self) -> None:
        branch = self.core.focused_branch()
        if branch.node_id == branch.root_node_id:
            self.core.message = "already at the root prompt"
            return
        self.core.command(self.core.store.reset_branch, branch.id)
        self.core.moved(self)
        self.core.message = "reset to the root prompt (u undoes)"

    @property
    def focused_branch_name(self) -> str:
        return self.core.focused_branch().name

    def rename_branch(self, name: str) -> None:
        branch = self.core.focused_branch()
        self.core.command(self.core.store.rename_branch, branch.id, name)
        self.core.message = f"renamed {branch.name} to {name.strip()}"

    def save_branch(self) -> Path | None:
        """Write the branch text to a new file in the saved-prompts dir; never overwrites."""
        view = self.core.view
        with view.reading():
            branch = self.core.focused_branch()
            ids = [n.token_id for n in view.path_of(branch.node_id)]
            pieces = view.pieces(ids)
        if len(pieces) < len(set(ids)):
            self.core.message = "cannot save yet: token text is still loading"
            return None
        text = b"".join(pieces[i] for i in ids).decode("utf-8", errors="replace")
        try:
            path, created = save_prompt(text)
        except OSError as exc:
            self.core.message = f"cannot save the prompt: {exc.strerror or exc}"
            return None
        if not created:
            self.core.message = f"already saved as {path}"
            return path
        self.core.command(self.core.store.record_prompt_saved, branch.id, str(path))
        self.core.message = f"saved to {path}"
        return path

