"""benchmarks/bench_deploy.py: a pruned folder is reused only when it was made with the recipe's present options."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import speechprune
import speechprune.models

ROOT = Path(__file__).resolve().parents[1]


def _folder(work: Path, merge_rule: str, recipe: str = "recommended", method: str = "pairs") -> Path:
    folder = work / f"base-encffn20-{recipe}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    report = dict(method=method, features="producer", allocation="variance", merge_rule=merge_rule, weighting="none")
    (folder / "speechprune_report.json").write_text(json.dumps(report))
    return folder


def test_a_folder_pruned_with_the_recipes_old_options_is_pruned_again(tmp_path, monkeypatch):
    """`recommended` changed its merge in round 3 and its method in round 4: a folder made under that name
    before is not this case; one made with the name's present options is."""
    prepare = runpy.run_path(str(ROOT / "benchmarks" / "bench_deploy.py"))["prepare"]
    calls = []
    monkeypatch.setattr(speechprune.models, "load_model", lambda name: ("model", "processor"))
    monkeypatch.setattr(speechprune, "compress", lambda model, **kw: calls.append(("compress", kw)) or "report")
    monkeypatch.setattr(speechprune, "save_pruned",
                        lambda model, folder, **kw: calls.append(("save", Path(folder), kw["overwrite"])))

    same = _folder(tmp_path / "a", merge_rule="refit", recipe="pairs-refit-2026")  # that recipe's options
    assert prepare("base", "encffn20", tmp_path / "a", "pairs-refit-2026") == same
    today = _folder(tmp_path / "o", merge_rule="refit", method="obs")  # `recommended` since round 4
    assert prepare("base", "encffn20", tmp_path / "o", "recommended") == today
    assert calls == [], "made with the same options: reused"

    for old, merge_rule in (("c", "mean"), ("d", "refit")):  # `recommended` in speechprune 0.4, and after round 3
        stale = _folder(tmp_path / old, merge_rule=merge_rule)
        assert prepare("base", "encffn20", tmp_path / old, "recommended") == stale
        assert calls[-2] == ("compress", dict(sparsity=0.2, scope="encoder.ffn", recipe="recommended", progress=False))
        assert calls[-1] == ("save", stale, True)
    assert len(calls) == 4


def test_saved_results_of_a_recipe_whose_options_changed_are_not_extended(tmp_path, capsys):
    """A results file records what its recipe resolved to; a run that would add cases pruned with the
    name's newer options stops (exit 2, one line) and leaves the file as it was."""
    import pytest

    main = runpy.run_path(str(ROOT / "benchmarks" / "bench_deploy.py"))["main"]
    out = tmp_path / "deploy.json"
    saved = dict(recipe="recommended", cases={"base/dense/transformers/float32": {}},
                 options=dict(method="pairs", features="producer", allocation="variance", merge="mean",
                              weighting="none"))  # `recommended` in speechprune 0.4
    out.write_text(json.dumps(saved))
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(out), "--models", "base", "--settings", "dense", "--work", str(tmp_path / "work")])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "as it was then" in err and "'merge': 'mean'" in err and "'merge': 'refit'" in err
    assert json.loads(out.read_text()) == saved
    assert not (tmp_path / "work").exists()


def test_the_readme_block_says_a_setting_loops_only_when_its_wer_is_above_100():
    """The README's sentence on looping comes from the saved WERs, not from an earlier run's."""
    readme_block = runpy.run_path(str(ROOT / "benchmarks" / "bench_deploy.py"))["readme_block"]

    def results(ffn50_wer: float) -> dict:
        case = dict(size_bytes=280e6, seconds_per_utt_1t=1.0, seconds_per_utt_2t=0.6, n_utterances=32, ref_words=443)
        cases = {"base/dense/transformers/float32": {**case, "wer": 2.26},
                 "base/encffn20/transformers/float32": {**case, "wer": 2.48},
                 "base/ffn50/transformers/float32": {**case, "wer": ffn50_wer},
                 "base/ffn50/ct2/int8": {**case, "size_bytes": 65e6, "wer": ffn50_wer + 300}}
        return dict(recipe="recommended", cases=cases, speed_clips=4, max_samples=32, machine=dict(cpus=2))

    assert "At ffn50 the pruned model loops (WER above 100%)" in readme_block(results(179.91))
    assert "loops" not in readme_block(results(29.80))
