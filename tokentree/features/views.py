"""The prompt and layer views (e, p): which ones this session offers and cycling them. The
core holds the current `prompt_view` / `layer_view` (the screen draws from them)."""

from __future__ import annotations

from tokentree.core.feature import Feature
from tokentree.core.snapshot import LAYER_VIEWS, PROMPT_VIEWS


class Views(Feature):
    name = "views"

    def cycle_prompt_view(self) -> None:
        core = self.core
        views = [v for v in PROMPT_VIEWS if v in self.prompt_views()]
        view = views[(views.index(core.prompt_view) + 1) % len(views)] if core.prompt_view in views else views[0]
        caps = core.engine.capabilities if core.engine is not None else None
        if view == "influence" and caps is not None and not caps.influence:
            core.message = f"influence view: {caps.influence_note or 'not available for this model'}"
            view = views[(views.index(view) + 1) % len(views)]
        core.prompt_view = view

    def prompt_views(self) -> tuple[str, ...]:
        """The prompt views this session offers (the disagreement view needs a compare model)."""
        compare = getattr(self.core.features, "compare", None)
        return PROMPT_VIEWS if compare is not None and compare.active else PROMPT_VIEWS[:-1]

    def cycle_layer_view(self) -> None:
        core = self.core
        if not core.layer_prob:
            core.message = "layer views are off: start tokentree with --layer_prob to enable them"
            return
        if core.engine is not None and not core.engine.capabilities.layer_lens:
            core.message = f"layer views: {core.engine.capabilities.layer_lens_note}"
            return
        core.layer_view = LAYER_VIEWS[(LAYER_VIEWS.index(core.layer_view) + 1) % len(LAYER_VIEWS)]

    def attached(self, engine) -> None:
        core, caps = self.core, engine.capabilities
        if core.prompt_view == "influence" and not caps.influence:
            core.prompt_view = "plain"
            core.message = f"influence view: {caps.influence_note or 'not available'}"
        if not caps.layer_lens and core.layer_view != "off":
            core.layer_view = "off"  # never draw a lens the model's own output contradicts
            core.message = f"layer views: {caps.layer_lens_note}"
