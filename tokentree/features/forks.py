"""Fork points ([ and ]) and counterfactuals (, and .): moving along a branch to where the
model was unsure, and replacing the last token by its neighbour in the table."""

from __future__ import annotations

from tokentree.core.feature import Feature
from tokentree.core.navigate import is_fork, next_fork


class Forks(Feature):
    name = "forks"

    def fork_point(self, step: int) -> None:
        """Move the branch back (-1) or forward (+1, along the explored path) to the next node
        where the model was unsure (normalized entropy above `fork_entropy`) or the tree forks."""
        core = self.core
        view, threshold = core.view, core.config.explore.fork_entropy
        with view.reading():
            branch = core.focused_branch()
            path = view.path_of(branch.node_id)
            line = path + (core.ahead(branch) if step > 0 else [])
            outs = view.outputs_for([n.prefix_key for n in line])
            kids = view.children_counts([n.id for n in line])

            def fork(node) -> bool:
                out = outs.get(node.prefix_key)
                return is_fork(out.next.norm_entropy if out else None, kids.get(node.id, 0), threshold)

            k = next_fork(line, len(path) - 1, step, fork)
        if k is None:
            core.message = f"no fork point {'ahead' if step > 0 else 'before this'} (fork_entropy {threshold})"
            return
        target, tip = line[k], path[-1]
        core.command(core.store.move_branch, branch.id, target.id)
        if step < 0:
            core.remember_popped(branch.id, tip)  # `]` and shift+right come back along this path
        core.moved(self)
        out = outs.get(target.prefix_key)
        why = f"entropy {out.next.norm_entropy:.2f}" if out and out.next.norm_entropy > threshold else "the tree forks"
        moved = abs(target.depth - tip.depth)
        core.message = f"fork point {moved} token{'s' if moved != 1 else ''} {'ahead' if step > 0 else 'back'}: {why}"

    def counterfactual(self, step: int) -> None:
        """Replace the last token by the next (+1) or previous (-1) candidate at its position:
        a pop and an append that undo as one step."""
        core = self.core
        view = core.view
        with view.reading():
            branch = core.focused_branch()
            node = view.node(branch.node_id)
            if node.parent_id is None:
                core.message = "nothing to replace: the branch is one token long"
                return
            rows = core.candidate_rows(view.node(node.parent_id))
            ids = [r.token_id for r in rows]
            j = ids.index(node.token_id) + step if node.token_id in ids else -1
            if not 0 <= j < len(rows):
                core.message = f"no {'next' if step > 0 else 'previous'} candidate at this position"
                return
        group = core.next_group()
        core.command(core.store.pop_token, branch.id, group=group)
        new_id = core.command(core.store.append_token, branch.id, rows[j].token_id, group=group)
        core.went_to(branch.id, new_id, node.depth)
        core.moved(self)
        core.message = f"replaced {rows[j - step].text} with {rows[j].text} (rank {rows[j].rank or '?'}; u undoes)"
