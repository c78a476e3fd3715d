"""The book's figures on a phone: the figure log (speechprune.book.figure_log) measures what a saved figure
shows, and scripts/build_book.py's figure check fails figures whose text a phone or desktop page would show
too small, or whose panels stand side by side."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt

from speechprune.book import figure_log
from speechprune.book.figures import BOOK_STYLE, FIGURE_WIDTH, MIN_FONT, wrap

ROOT = Path(__file__).resolve().parents[1]


def _build_book():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_book = _build_book()


@pytest.fixture
def logged(tmp_path, monkeypatch):
    """Figures made by pyplot in this test are logged to a file (as in a build); returns a reader."""
    log = tmp_path / "figures.jsonl"
    monkeypatch.setenv(figure_log.ENV, str(log))
    monkeypatch.setitem(matplotlib.rcParams, "figure.hooks", list(matplotlib.rcParams["figure.hooks"]))
    assert figure_log.register()
    yield lambda: [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    plt.close("all")


def _panels(tmp_path, rows: int, cols: int, width: float, tick_pt: float, name: str) -> Path:
    fig, axes = plt.subplots(rows, cols, figsize=(width, 3.2 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.bar(["magnitude", "cluster"], [12.5, 9.8], label="WER")
        ax.tick_params(labelsize=tick_pt)
        ax.set_ylabel("WER (%)", fontsize=tick_pt + 1)
        ax.set_title(f"panel {i}", fontsize=tick_pt + 1)
        ax.legend(fontsize=tick_pt + 1)
    fig.tight_layout()
    out = tmp_path / f"{name}.png"
    fig.savefig(out, bbox_inches="tight")  # as the inline backend saves the page's PNG
    plt.close(fig)
    return out


def test_wide_three_panel_figure_with_8pt_ticks_fails_on_a_phone(tmp_path, logged):
    png = _panels(tmp_path, 1, 3, 12, 8, "wide")
    (record,) = logged()
    from PIL import Image

    with Image.open(png) as image:  # the log measures the saved image, cropped by the tight bounding box
        assert abs(image.width - record["width_px"]) <= 2 and abs(image.height - record["height_px"]) <= 2
    assert record["panels"] == 3 and record["columns"] == 3 and record["title"] == "panel 0"
    assert record["min_text_px"] == pytest.approx(8 * 100 / 72, abs=0.01)  # 8 pt at 100 dpi
    problems = build_book.figure_problems("notebooks/x.html", [record])
    assert any("3 panels side by side" in p for p in problems)
    phone = [p for p in problems if "on a phone" in p]
    assert len(phone) == 1 and "notebooks/x.html, figure 1 'panel 0'" in phone[0]
    # and on a desktop page too: 11.1 px in a ~1150 px image shown 688 px wide is 6.6 px
    assert any("on a desktop page" in p for p in problems)


def test_the_same_panels_stacked_at_5_inches_with_10_or_11_pt_pass(tmp_path, logged):
    _panels(tmp_path, 3, 1, 5, 10, "stacked")
    (record,) = logged()
    assert record["panels"] == 3 and record["columns"] == 1
    assert record["width_px"] <= 560
    assert build_book.figure_problems("notebooks/x.html", [record]) == []
    assert figure_log.shown_text_px(record, build_book.COLUMN[build_book.PHONE]) >= 9


def test_text_is_judged_at_the_width_the_page_shows_it():
    record = dict(title="t", width_px=1000.0, min_text_px=13.9, min_text="0.5", panels=1, columns=1)
    assert figure_log.shown_text_px(record, 358) == pytest.approx(13.9 * 0.358)  # scaled down to the column
    assert figure_log.shown_text_px(dict(record, width_px=300.0), 358) == 13.9  # narrower: its own size
    columns, minimum = {390: 358.0, 1280: 688.0}, {390: 9.0, 1280: 8.0}
    problems = build_book.figure_problems("book/results.html", [record], columns, minimum)
    assert len(problems) == 1 and "book/results.html, figure 1 't'" in problems[0] and "on a phone" in problems[0]


def test_only_drawn_text_counts(tmp_path, logged):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    ax.set_xlim(0, 1)
    ax.tick_params(labelsize=12)
    ax.set_xlabel("x", fontsize=12)
    ax.set_ylabel("y", fontsize=12)
    ax.text(0.5, 0.5, "hidden", fontsize=3, visible=False)
    ax.text(0.5, 0.5, " ", fontsize=3)  # blank
    ax.text(5.0, 5.0, "off the image", fontsize=4, clip_on=False)
    ax.xaxis.set_ticks_position("bottom")
    fig.savefig(tmp_path / "a.png", bbox_inches=None)
    (record,) = logged()
    assert record["min_text_px"] == pytest.approx(12 * 100 / 72, abs=0.01)


def test_a_figure_saved_twice_is_logged_twice_and_a_dry_run_never(tmp_path, logged):
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_title("once")
    fig.canvas.draw()  # not a save: nothing logged
    assert logged() == []
    fig.savefig(tmp_path / "a.png", bbox_inches="tight")
    fig.savefig(tmp_path / "b.png")
    assert [r["title"] for r in logged()] == ["once", "once"]


def test_without_the_variable_nothing_is_registered_or_written(tmp_path, monkeypatch):
    monkeypatch.delenv(figure_log.ENV, raising=False)
    monkeypatch.setitem(matplotlib.rcParams, "figure.hooks", [])
    assert figure_log.register() is False
    assert figure_log.HOOK not in matplotlib.rcParams["figure.hooks"]
    fig = plt.figure()
    figure_log.log_figure(fig)  # even called directly, it connects and writes nothing
    fig.savefig(tmp_path / "a.png")
    plt.close(fig)
    assert list(tmp_path.iterdir()) == [tmp_path / "a.png"]


def test_book_style_keeps_the_rule_of_thumb():
    # font_pt >= 1.8 * width_in keeps the text >= 9 px on a 358 px phone column (100 dpi, tight margins)
    assert MIN_FONT >= 1.8 * FIGURE_WIDTH
    assert BOOK_STYLE["figure.figsize"][0] == FIGURE_WIDTH
    assert min(v for k, v in BOOK_STYLE.items() if k.endswith("size") and not isinstance(v, tuple)) >= MIN_FONT
    text = "Paper (abstract): HuBERT-large on LibriSpeech, 50% sparsity, 5 epochs fine-tuning"
    assert wrap(text).split() == text.split() and all(len(line) <= 63 for line in wrap(text).splitlines())


def test_the_book_plots_stack_their_panels_and_pass(tmp_path, logged):
    from speechprune.study.tables import plot_records

    records = [dict(model="embedded:whisper-base", data="embedded", max_samples=16, decoding="greedy",
                    scope=scope, sparsity=sparsity, method=method, label=label, seed=seed, features="p",
                    allocation="uniform", merge="mean", weighting=None,
                    wer=10.0 + (seed or 0) + (5 if method == "magnitude" else 0), key=f"{scope}{sparsity}{label}{seed}")
               for scope, sparsity in (("encoder.ffn", 0.2), ("ffn", 0.1))
               for method, label, seeds in (("magnitude", "magnitude", [None]), ("cluster", "cluster (paper)", [0, 1, 2]))
               for seed in seeds]
    fig = plot_records(records, title="one dot per k-means seed; magnitude pruning is a single run")
    fig.savefig(tmp_path / "records.png", bbox_inches="tight")
    (record,) = logged()
    assert record["panels"] == 2 and record["columns"] == 1
    assert build_book.figure_problems("book/results.html", [record]) == []


def test_the_build_logs_each_notebook_where_the_hook_writes(tmp_path, monkeypatch):
    assert build_book.FIGURE_LOG == figure_log.ENV
    monkeypatch.setattr(build_book, "BUILD", tmp_path)
    nb = Path("notebooks/01_channel_clustering.ipynb")
    log = build_book.figure_log(nb)
    assert log.parent == tmp_path / "figures" and build_book.read_figure_log(nb) == []
    log.parent.mkdir()
    log.write_text(json.dumps(dict(title="a", width_px=500.0, min_text_px=13.9, panels=1, columns=1)) + "\n")
    assert build_book.read_figure_log(nb)[0]["title"] == "a"
