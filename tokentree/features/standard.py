"""The features every session runs, in the order their hooks are asked (esc stops a fill
before it forgets a search; a constraint's index is built before the main model's work)."""

from __future__ import annotations

from .branches import Branches
from .chat import Chat
from .compare.feature import Compare
from .constraint.feature import Constraint
from .fill import Fill
from .forks import Forks
from .prefetch.feature import Prefetch
from .sample import Sample
from .sampler_column import SamplerColumn
from .search import Search
from .views import Views

FEATURES = (Constraint, Sample, Fill, Search, Branches, Forks, SamplerColumn, Compare, Prefetch, Chat, Views)
