"""Named sets of compression options: ``--recipe paper|recommended``.

A recipe fills in the clustering options (method, features, allocation, merge, weighting); any
option given explicitly overrides it. ``paper`` is our reading of the paper (k-means on producer
rows, biases and consumer columns; uniform allocation; mean merge) and stays the default.

``recommended`` is what the selection rule in ``studies/README.md`` (written before the runs)
picked in its fourth round, by ``scripts/select_recipe.py pick --round 4``: the ``obs`` method
(structured optimal brain surgeon, :mod:`speechprune.obs`: each feed-forward block loses the
channels whose output the others, with the consumer re-solved, can best stand in for, greedily, on
the block's inputs on synthetic speech-like audio; no recording, no seed), the variance allocation
(each layer's share of the budget follows the spread of its channels), and the refit merge
(``merge="refit"``: the consumer re-solved by ridge least squares with the damping the method's cost
assumed, :mod:`speechprune.refit`). The final study (``results/studies/recipe-final-4.json``:
Whisper base, all 208 clips of ``embedded-full``, the three settings) scored it 8.70 (median WER
averaged over the settings) against 37.78 for round 3's pick, and it beats magnitude pruning with an
interval that excludes 0 in all three settings, encoder FFN 50% included.

``pairs-refit-2026`` is round 3's pick (``scripts/select_recipe.py pick --round 3``, from
``results/studies/recipe-final-3.json``), the ``recommended`` recipe between rounds 3 and 4 (never
released): closest pairs first (``method="pairs"``) on the producer rows and biases, the variance
allocation and the refit merge. ``pairs-variance-2026`` is round 2's pick (``recipe-final-2.json``),
the ``recommended`` recipe of speechprune 0.4: the same with the mean merge. ``pairs-2026`` is round
1's pick (``recipe-final.json``), the ``recommended`` recipe of speechprune 0.3: closest pairs first on
producer features with the uniform allocation and the mean merge. All three keep their names so that
models, studies and commands made with them stay reproducible.
"""

from __future__ import annotations

from speechprune.errors import check_choice

RECIPES_OPTIONS: dict[str, dict[str, str]] = {
    "paper": dict(method="cluster", features="both", allocation="uniform", merge="mean", weighting="none"),
    # picked by the rule in studies/README.md, round 4 (scripts/select_recipe.py pick --round 4 on recipe-final-4.json)
    "recommended": dict(method="obs", features="producer", allocation="variance", merge="refit", weighting="none"),
    # round 3's pick (scripts/select_recipe.py pick --round 3 on recipe-final-3.json): `recommended` until round 4
    "pairs-refit-2026": dict(method="pairs", features="producer", allocation="variance", merge="refit",
                             weighting="none"),
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
