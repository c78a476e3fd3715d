"""Named sets of compression options: ``--recipe paper|recommended``.

A recipe fills in the clustering options (method, features, allocation, merge, weighting); any
option given explicitly overrides it. ``paper`` is our reading of the paper (k-means on producer
rows, biases and consumer columns; uniform allocation; mean merge) and stays the default.

``recommended`` is what the selection rule in ``studies/README.md`` (written before the runs)
picked, by ``scripts/select_recipe.py``: closest pairs first (``method="pairs"``, no seed) on the
producer rows and biases, uniform allocation, mean merge. The screening
(``results/studies/screen-recipes.json``: both embedded Whisper models, three settings, 64 clips,
seeds 0-2) kept it and k-means on producer features with the variance allocation; the final study
(``results/studies/recipe-final.json``: Whisper base, all 208 clips of ``embedded-full``, the
three settings, 5 seeds) scored them 42.86 and 42.14 (median WER averaged over the settings), a
tie within 1 point that the rule gives to the lower worst case (42.86 against 46.64), and both
beat magnitude pruning with an interval that excludes 0 at encoder FFN 20% and both stacks' FFN
10%. At encoder FFN 50% no option can be told from magnitude pruning (all near 100% WER).
"""

from __future__ import annotations

from speechprune.errors import check_choice

RECIPES_OPTIONS: dict[str, dict[str, str]] = {
    "paper": dict(method="cluster", features="both", allocation="uniform", merge="mean", weighting="none"),
    # picked by the rule in studies/README.md (scripts/select_recipe.py pick on recipe-final.json)
    "recommended": dict(method="pairs", features="producer", allocation="uniform", merge="mean", weighting="none"),
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
