"""Named sets of compression options: ``--recipe paper|recommended``.

A recipe fills in the clustering options (features, allocation, merge, weighting); any option
given explicitly overrides it. ``paper`` is our reading of the paper (producer rows, biases and
consumer columns; uniform allocation; mean merge). ``recommended`` is the recipe that the rule
in ``studies/README.md`` picks from the screening and final studies; until those studies have
run it is the paper's recipe, so that ``--recipe recommended`` never claims more than was measured.
"""

from __future__ import annotations

from speechprune.errors import check_choice

RECIPES_OPTIONS: dict[str, dict[str, str]] = {
    "paper": dict(method="cluster", features="both", allocation="uniform", merge="mean", weighting="none"),
    # the paper's until the rule in studies/README.md picks another from saved studies
    "recommended": dict(method="cluster", features="both", allocation="uniform", merge="mean", weighting="none"),
}
RECIPES = tuple(RECIPES_OPTIONS)
DEFAULT_RECIPE = "paper"


def recipe_options(name: str) -> dict[str, str]:
    """The options a recipe sets (a copy)."""
    check_choice("recipe", name, RECIPES)
    return dict(RECIPES_OPTIONS[name])


def resolve(recipe: str | None = None, **explicit: str | None) -> dict[str, str]:
    """The recipe's options, with every explicit (non-None) option taking precedence."""
    options = recipe_options(recipe or DEFAULT_RECIPE)
    options.update({k: v for k, v in explicit.items() if v is not None})
    return options
