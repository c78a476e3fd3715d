"""speechprune.book.recipes: each named recipe found by its options, and its held-out sentences."""

from __future__ import annotations

from speechprune.book.recipes import recipe_labels, recipe_sentences
from speechprune.options import recipe_fields
from speechprune.study import saved_study

IDS = [f"u{i}" for i in range(40)]


def _run(label: str, errors: list[int], seed=None, recipe: str | None = None, method: str | None = None,
         sparsity: float | None = 0.2, scope: str | None = "encoder.ffn") -> dict:
    options = recipe_fields(recipe) if recipe else dict(method=method, features="producer",
                                                                  allocation="uniform", merge="mean", weighting="none")
    return dict(label=label, model="m", data="d", decoding="greedy", scope=scope, sparsity=sparsity, seed=seed,
                wer=100 * sum(errors) / 400, utterance_ids=IDS, utterance_errors=errors, utterance_words=[10] * 40,
                **options)


def _records(ours: list[int], previous: list[int]) -> list[dict]:
    return [_run("dense", [0] * 39 + [1], method="dense", sparsity=None, scope=None),
            _run("O", ours, recipe="recommended"), _run("R", previous, recipe="pairs-refit-2026"),
            _run("magnitude", [5] * 40, method="magnitude")]


def test_recipes_are_found_by_their_options_not_their_labels():
    labels = recipe_labels(_records([1] * 40, [1] * 40))
    assert labels == {"recommended": "O", "pairs-refit-2026": "R", "magnitude": "magnitude"}


def test_sentences_give_ratios_the_target_and_paired_verdicts():
    said = recipe_sentences(_records([0] * 38 + [1, 1], [1] * 40), "encoder.ffn", 0.2, n_boot=200)
    # dense 1 error in 400 words (0.25%); recommended 2 (0.50%: 2.0 times); pairs-refit-2026 40 (10%)
    assert said["wers"].startswith("structured brain-surgeon pruning on synthetic speech with the variance "
                                   "allocation and the refit merge (the recommended recipe) "
                                   "0.50%, 2.0 times the uncompressed model's 0.25%")
    assert said["target"] == "at most 2 times the uncompressed WER: met"
    assert said["versus_magnitude"].startswith("the recommended recipe is lower than magnitude pruning")
    assert said["versus_previous"].startswith("the recommended recipe is lower than pairs-refit-2026")
    tied = recipe_sentences(_records([1] * 40, [1] * 40), "encoder.ffn", 0.2, n_boot=200)
    assert tied["target"] == "at most 2 times the uncompressed WER: not met (40.00 times)"
    assert tied["versus_previous"].startswith("the data cannot decide")
    assert recipe_sentences(_records([1] * 40, [1] * 40), "ffn", 0.1) == {}, "nothing measured at that budget"


def test_the_shipped_heldout_study_names_the_recommended_recipe():
    held = saved_study("recipe-final-4-heldout")
    said = recipe_sentences(held["records"], "ffn", 0.1, n_boot=200)
    assert "(the recommended recipe)" in said["wers"] and "(pairs-refit-2026)" in said["wers"]
    assert "(pairs-variance-2026)" in said["wers"]
    assert "the recommended recipe" in said["versus_previous"] and "pairs-refit-2026" in said["versus_previous"]
    assert "`" not in "".join(said.values()), "glue:text renders no Markdown"
    assert said["target"].startswith("at most 1.5 times the uncompressed WER: ")
