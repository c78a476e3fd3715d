"""Named sets of compression options: ``--recipe paper|recommended``.

A recipe fills in the clustering options (method, features, allocation, merge, weighting); any
option given explicitly overrides it. ``paper`` is our reading of the paper (k-means on producer
rows, biases and consumer columns; uniform allocation; mean merge) and stays the default.

``recommended`` is what the selection rule in ``studies/README.md`` (written before the runs)
picked in its third round, by ``scripts/select_recipe.py pick --round 3``: closest pairs first
(``method="pairs"``, no seed) on the producer rows and biases, the variance allocation (each layer's
share of the budget follows the spread of its channels), and the refit merge (``merge="refit"``:
each feed-forward consumer refitted by ridge least squares to the dense block on synthetic
speech-like audio, :mod:`speechprune.refit`; no recording). The final study
(``results/studies/recipe-final-3.json``: Whisper base, all 208 clips of ``embedded-full``, the
three settings) scored it 37.78 (median WER averaged over the settings) against 39.03 for round 2's
pick, and it beats magnitude pruning with an interval that excludes 0 at encoder FFN 20% and both
stacks' FFN 10%. At encoder FFN 50% no data-free option beats magnitude pruning (all near 100% WER).

``pairs-variance-2026`` is round 2's pick (``scripts/select_recipe.py pick --round 2``, from
``results/studies/recipe-final-2.json``), the ``recommended`` recipe of speechprune 0.4: the same
without the refit (mean merge). ``pairs-2026`` is round 1's pick (``results/studies/recipe-final.json``),
the ``recommended`` recipe of speechprune 0.3: closest pairs first on producer features with the
uniform allocation and the mean merge. Both keep their names so that models, studies and commands
made with them stay reproducible.
"""

from __future__ import annotations

from speechprune.errors import check_choice

RECIPES_OPTIONS: dict[str, dict[str, str]] = {
    "paper": dict(method="cluster", features="both", allocation="uniform", merge="mean", weighting="none"),
    # picked by the rule in studies/README.md, round 3 (scripts/select_recipe.py pick --round 3 on recipe-final-3.json)
    "recommended": dict(method="pairs", features="producer", allocation="variance", merge="refit", weighting="none"),
    # round 2's pick (scripts/select_recipe.py pick --round 2 on recipe-final-2.json): `recommended` in speechprune 0.4
    "pairs-variance-2026": dict(method="pairs", features="producer", allocation="variance", merge="mean",
                                weighting="none"),
    # round 1's pick (scripts/select_recipe.py pick on recipe-final.json): `recommended` in speechprune 0.3
    "pairs-2026": dict(method="pairs", features="producer", allocation="uniform", merge="mean", weighting="none"),
}
RECIPES = tuple(RECIPES_OPTIONS)
DEFAULT_RECIPE = "paper"
#: The baseline every recipe is compared with (its role in studies, tables and the main job).
BASELINE = "magnitude"


def recipe_options(name: str) -> dict[str, str]:
    """The options a recipe sets (a copy)."""
    check_choice("recipe", name, RECIPES)
    return dict(RECIPES_OPTIONS[name])


def resolve(recipe: str | None = None, **explicit: str | None) -> dict[str, str]:
    """The recipe's options, with every explicit (non-None) option taking precedence."""
    options = recipe_options(recipe or DEFAULT_RECIPE)
    options.update({k: v for k, v in explicit.items() if v is not None})
    return options
