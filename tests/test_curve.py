"""Chapter 3's fine-tuning curve (speechprune.book.curve): the comparisons and the sentences it generates."""

from __future__ import annotations

import json

from speechprune.book.curve import curve_comparisons, curve_sentences, first_decided_win, saved_curve


def _record(method: str, step: int, errors: list[int]) -> dict:
    n = len(errors)
    return dict(method=method, step=step, seed=None, wer=100 * sum(errors) / (2 * n), n_utterances=n,
                train_seconds=6.0 * step, utterance_ids=[f"u{i}" for i in range(n)], utterance_errors=errors,
                utterance_words=[2] * n)


def _saved(records: list[dict], steps=(10, 20)) -> dict:
    return dict(model="embedded:whisper-base", scope="encoder.ffn", sparsity=0.5, train=dict(name="embedded:train"),
                test=dict(name="embedded"), date="2026-12-05T10:00:00+00:00", records=records,
                training=dict(freeze="encoder", learning_rate=1e-4, batch_size=8, max_steps=20, seed=0,
                              snapshot_steps=list(steps)))


def test_the_first_decided_win_is_the_first_step_whose_paired_interval_excludes_0():
    same, fewer = [1] * 40, [1, 0] * 20
    saved = _saved([_record("magnitude", s, same) for s in (0, 10, 20)]
                   + [_record("pairs-2026", 0, same), _record("pairs-2026", 10, [1] * 39 + [0]),
                      _record("pairs-2026", 20, fewer)])
    rows = curve_comparisons(saved)
    assert [r["step"] for r in rows] == [0, 10, 20]
    assert [r["decided_lower"] for r in rows] == [False, False, True]  # one utterance better decides nothing
    assert first_decided_win(rows)["step"] == 20
    said = curve_sentences(saved)
    assert "first after 20 steps (160 training utterances seen; 2.0 min of training" in said["answer"]
    assert "the decoder only" in said["status"] and "40 utterances of embedded" in said["status"]
    assert said["status"].count("(") == said["status"].count(")")
    assert said["steps"].count("after ") == 3


def test_a_complete_curve_without_a_win_says_so_and_an_incomplete_one_says_it_is_incomplete():
    same = [1] * 40
    complete = _saved([_record(m, s, same) for m in ("magnitude", "pairs-2026") for s in (0, 10, 20)])
    assert curve_sentences(complete)["answer"].startswith("within the 20 steps measured")
    partial = _saved([_record(m, 0, same) for m in ("magnitude", "pairs-2026")])
    assert "not complete" in curve_sentences(partial)["answer"]


def test_an_absent_curve_is_named_with_the_command_that_makes_it(tmp_path):
    assert saved_curve(tmp_path, name="no-such-curve") is None
    said = curve_sentences(None)
    assert all("python studies/finetune_curve.py" in text for text in said.values())
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "mine.json").write_text(json.dumps(_saved([])))
    assert saved_curve(tmp_path, name="mine")["model"] == "embedded:whisper-base"


def test_the_curve_script_refuses_to_add_runs_of_other_settings_to_a_saved_curve(tmp_path):
    """A rerun into the same file must share the saved curve's settings, or its records would mix two experiments;
    the defaults are the settings of the shipped curve, so the plain command reproduces it."""
    import copy
    import importlib.util
    from pathlib import Path

    import pytest

    spec = importlib.util.spec_from_file_location("finetune_curve", Path(__file__).resolve().parents[1] / "studies"
                                                  / "finetune_curve.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    saved = saved_curve()
    same = copy.deepcopy(saved)
    same["training"] = dict(script.TRAINING, max_steps=40)
    script._check_same_run(saved, same, tmp_path / "curve.json")  # the shipped curve's settings: accepted
    other = copy.deepcopy(same)
    other["training"]["freeze"], other["test"]["count"] = "front-end", 2
    with pytest.raises(SystemExit, match=r"other settings \(training.freeze, test speech\)"):
        script._check_same_run(saved, other, tmp_path / "curve.json")
    script._check_same_run({}, other, tmp_path / "curve.json")  # nothing saved yet: anything goes
