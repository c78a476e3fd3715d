"""The selection rule of ``studies/README.md``, step by step, as commands (nothing here is a judgement call).

    python scripts/select_recipe.py final   # step 1 -> step 2: write the final studies from the screening
    python scripts/select_recipe.py pick    # step 3: the recommended recipe from the final study
    python scripts/select_recipe.py final --round 2   # the same for round 2 (issue 20; studies/README.md)
    python scripts/select_recipe.py pick --round 2
    python scripts/select_recipe.py pick --round 3   # round 3 (the refit merge): one candidate, no screening
    python scripts/select_recipe.py pick --round 4   # round 4 (the obs method): one candidate, no screening

``final`` reads ``results/studies/screen-recipes.json``, keeps the two options with the lowest
screening score (``speechprune.study.select_options``) and writes two study files: the kept
options, the paper's recipe and magnitude pruning on Whisper base, ``embedded-full`` (208 clips),
the book's three settings and five seeds (``studies/recipe-final.toml``), and the same on the
held-out clips of ``embedded:train`` (``studies/recipe-final-heldout.toml``). It refuses while the
screening is incomplete and never overwrites a study file.

``pick`` reads ``results/studies/recipe-final.json`` and applies step 3
(``speechprune.study.recommend``): it prints the choice, the reason and the options to write into
``RECIPES_OPTIONS["recommended"]`` in ``speechprune/recipes.py``.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from speechprune.study import PAPER_OPTION as PAPER  # noqa: E402  the paper's recipe, as the screening labels it
from speechprune.study import dump_study  # noqa: E402
from speechprune.study.selection import (INCUMBENT_OPTION, ROUND_2_OPTION, ROUND_3_OPTION,  # noqa: E402
                                         SCREENING_EXCLUDES)

SCREEN = "screen-recipes"
FINAL = "recipe-final"
MODEL = "embedded:whisper-base"
FINAL_DATA = {FINAL: "embedded-full", f"{FINAL}-heldout": "embedded:train"}
INCUMBENT = INCUMBENT_OPTION  # the recommended recipe that round 1 picked: round 2's incumbent
#: Each round of the rule: its screening and final studies, the options carried into the final study
#: besides the kept ones, the options the screening may not keep, and the incumbent a pick must beat.
ROUNDS = {
    1: dict(screen=SCREEN, final=FINAL, carried=[PAPER], exclude=SCREENING_EXCLUDES[SCREEN], incumbent=None,
            fallback=PAPER),
    2: dict(screen="screen-recipes-2", final="recipe-final-2", carried=[PAPER, INCUMBENT],
            exclude=SCREENING_EXCLUDES["screen-recipes-2"], incumbent=INCUMBENT, fallback=INCUMBENT),
    # round 3 has one candidate and no screening: its final studies were written with the rule
    3: dict(screen=None, final="recipe-final-3", carried=[PAPER, ROUND_2_OPTION], exclude=(),
            incumbent=ROUND_2_OPTION, fallback=ROUND_2_OPTION),
    # round 4 (the obs method) likewise: one candidate, O, against round 3's pick R
    4: dict(screen=None, final="recipe-final-4", carried=[PAPER, ROUND_2_OPTION, ROUND_3_OPTION], exclude=(),
            incumbent=ROUND_3_OPTION, fallback=ROUND_3_OPTION),
}


def final_spec_text(screen_spec: dict, kept: list[str], name: str, data: str, scores: list[dict],
                    carried: list[str] | None = None, screen: str = SCREEN) -> str:
    """The final study's TOML: magnitude, the carried options (the paper's recipe; in round 2 also the
    incumbent) and the kept options of the screening."""
    carried = [PAPER] if carried is None else carried
    by_label = {o.get("label"): o for o in screen_spec["options"]}
    missing = [k for k in kept + carried if k not in by_label]
    if missing:
        raise SystemExit(f"the screening file has no option labelled {missing[0]!r}")
    options = [dict(method="magnitude")] + [by_label[c] for c in carried] + [by_label[k] for k in kept
                                                                              if k not in carried]
    score = {r["option"]: r for r in scores}
    comment = (f"Step 2 of the selection rule in studies/README.md, written by scripts/select_recipe.py final from\n"
               f"results/studies/{screen}.json: the screening kept "
               + " and ".join(f"{k!r} (score {score[k]['score']:.2f}, worst {score[k]['worst']:.2f})" for k in kept)
               + ".")
    spec = dict(name=name,
                description=f"Final recipe study: magnitude, the paper's recipe"
                            + "".join(f", the incumbent {c!r}" for c in carried if c != PAPER)
                            + f" and the screening's two kept options; {MODEL} on {data}, three settings, "
                              "5 k-means seeds",
                models=[MODEL], data=[data], seeds=5, decoding=["greedy"],
                settings=[{k: v for k, v in s.items() if k != "models"} for s in screen_spec["settings"]],
                options=options)
    return dump_study(spec, comment=comment)


def final(root: Path = ROOT, round: int = 1) -> list[Path]:
    from speechprune.study import load_records, screening_scores, select_options

    plan = ROUNDS[round]
    screen, final_name = plan["screen"], plan["final"]
    if screen is None:
        raise SystemExit(f"round {round} has no screening: its final studies (studies/{final_name}.toml and "
                         f"studies/{final_name}-heldout.toml) were written with its rule in studies/README.md")
    results = root / "results" / "studies" / f"{screen}.json"
    if not results.is_file():
        raise SystemExit(f"{results.relative_to(root)} is absent: run the screening first")
    saved = load_records(results)
    n_runs, n_done = saved.get("n_runs"), len(saved["records"])
    if n_runs is None or n_done < n_runs:
        raise SystemExit(f"the screening is not complete ({n_done} of {n_runs} runs): step 1 needs all of them")
    scores = screening_scores(saved["records"])
    kept = select_options(scores, exclude=plan["exclude"])
    spec = tomllib.loads((root / "studies" / f"{screen}.toml").read_text(encoding="utf-8"))
    written = []
    for name, data in {final_name: "embedded-full", f"{final_name}-heldout": "embedded:train"}.items():
        path = root / "studies" / f"{name}.toml"
        if path.exists():
            raise SystemExit(f"{path.relative_to(root)} exists already: it is never overwritten (remove it by hand)")
        text = final_spec_text(spec, kept, name, data, scores, plan["carried"], screen)
        tomllib.loads(text)  # the file must parse
        path.write_text(text, encoding="utf-8")
        written.append(path)
    print(f"the screening kept {kept[0]!r} and {kept[1]!r}; wrote " + ", ".join(p.name for p in written))
    return written


def pick(root: Path = ROOT, round: int = 1) -> dict:
    from speechprune.study import load_records, recommend

    plan = ROUNDS[round]
    final_name = plan["final"]
    results = root / "results" / "studies" / f"{final_name}.json"
    if not results.is_file():
        raise SystemExit(f"{results.relative_to(root)} is absent: run `speechprune study studies/{final_name}.toml`")
    saved = load_records(results)
    if len(saved["records"]) < saved.get("n_runs", 0):
        raise SystemExit(f"the final study is not complete ({len(saved['records'])} of {saved['n_runs']} runs)")
    picked = recommend(saved["records"], fallback=plan["fallback"], incumbent=plan["incumbent"])
    print(f"recommended: {picked['choice']}\nwhy: {picked['reason']}")
    for row in picked["rows"]:
        print(f"  {row['option']}: score {row['score']:.2f}, worst {row['worst']:.2f}, clear wins over magnitude "
              f"{row['wins']} of {row['of_settings']}, {row['seeds']} seeds")
    spec = tomllib.loads((root / "studies" / f"{final_name}.toml").read_text(encoding="utf-8"))
    chosen = next(o for o in spec["options"] if o.get("label") == picked["choice"])
    from speechprune.options import RECIPE_FIELDS
    from speechprune.recipes import resolve

    picked["options"] = resolve(chosen.get("recipe"), **{k: chosen.get(k) for k in RECIPE_FIELDS})
    print("options for RECIPES_OPTIONS['recommended']:", picked["options"])
    return picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=["final", "pick"])
    parser.add_argument("--round", type=int, choices=sorted(ROUNDS), default=1,
                        help="1: the first recipe search (issue 9); 2: the second (issue 20); 3: the refit merge")
    args = parser.parse_args(argv)
    (final if args.step == "final" else pick)(round=args.round)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
