"""Plug-in assignment methods: the registry, checked returns, explicit budgets and entry points."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_hubert, make_tiny_whisper
from test_compress import _forward, _input

import speechprune
from speechprune import compress, register_method
from speechprune.allocation import allocate
from speechprune.checkpoint import load_checkpoint
from speechprune.errors import SpeechPruneError
from speechprune.methods import available_methods, get_method, load_entry_points, unregister_method
from speechprune.structure import units_in_scope, widths

ROOT = Path(__file__).resolve().parents[1]


def keep_last(unit, k):
    """A method outside the package: keep the last k channels, drop the others."""
    labels = torch.full((unit.n_channels,), -1, dtype=torch.long)
    labels[-k:] = torch.arange(k)
    return labels


def pair_up(unit, k, *, seed):
    """Merge channel i with channel i + k where there is one (takes the seed to show options arrive)."""
    assert isinstance(seed, int)
    labels = torch.arange(unit.n_channels) % k
    return labels


@pytest.fixture
def registered():
    names = []

    def _register(name, fn, **kw):
        register_method(name, fn, **kw)
        names.append(name)

    yield _register
    for name in names:
        unregister_method(name)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, state):
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items())


def test_a_method_from_outside_the_package_compresses_by_name_and_as_a_callable(registered):
    registered("keep-last", keep_last)
    assert "keep-last" in available_methods()
    by_name, direct = make_tiny_hubert(), make_tiny_hubert()
    x = _input("hubert")
    report = compress(by_name, method="keep-last", sparsity=0.25, scope="ffn", progress=False)
    compress(direct, method=keep_last, sparsity=0.25, scope="ffn", progress=False)
    assert report.method == "keep-last"
    assert all(u.channels_after == 48 for u in report.units)
    torch.testing.assert_close(_forward(by_name, x), _forward(direct, x))
    # keep_last keeps channels 16..63: the pruned layer holds exactly those rows
    dense = make_tiny_hubert()
    ff, ff0 = by_name.hubert.encoder.layers[0].feed_forward, dense.hubert.encoder.layers[0].feed_forward
    torch.testing.assert_close(ff.intermediate_dense.weight, ff0.intermediate_dense.weight[16:])
    torch.testing.assert_close(ff.output_dense.weight, ff0.output_dense.weight[:, 16:])
    # the report's cost is the generic one: the squared norm of what was dropped
    assert report.units[0].cost > 0


def test_options_reach_a_method_that_names_them(registered):
    registered("pair-up", pair_up)
    model = make_tiny_whisper()
    report = compress(model, method="pair-up", sparsity=0.5, seed=3, progress=False, merge="weighted")
    assert report.seed == 3 and report.merge == "weighted" and report.features == "none"
    assert widths(model)["encoder.layers.0.ffn"] == 32


def test_builtins_are_registered_like_any_other_method():
    assert available_methods()[:2] == ("cluster", "magnitude")
    a, b = make_tiny_hubert(), make_tiny_hubert()
    compress(a, method="cluster", sparsity=0.5, progress=False)
    compress(b, method=get_method("cluster").fn, sparsity=0.5, progress=False)
    x = _input("hubert")
    torch.testing.assert_close(_forward(a, x), _forward(b, x))


def test_registering_a_name_twice_needs_replace(registered):
    registered("keep-last", keep_last)
    with pytest.raises(SpeechPruneError, match="'keep-last' is already registered; pass replace=True"):
        register_method("keep-last", pair_up)
    register_method("keep-last", pair_up, replace=True)
    assert get_method("keep-last").fn is pair_up
    with pytest.raises(SpeechPruneError, match="already registered"):
        register_method("cluster", keep_last)
    with pytest.raises(SpeechPruneError, match="not callable"):
        register_method("nothing", 42)
    with pytest.raises(SpeechPruneError, match="built-in"):
        unregister_method("magnitude")


def test_decorator_form(registered):
    @register_method("decorated")
    def decorated(unit, k):
        return keep_last(unit, k)

    try:
        assert get_method("decorated").fn is decorated
    finally:
        unregister_method("decorated")


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(SpeechPruneError, match="unknown method 'kmedoids': use one of cluster, magnitude"):
        compress(make_tiny_hubert(), method="kmedoids", progress=False)


def _fails_on_layer_1(bad):
    """A method that is fine on every unit but the encoder's layer 1, where it returns ``bad``."""
    def method(unit, k):
        if unit.name.startswith("encoder.layers.1"):
            if isinstance(bad, Exception):
                raise bad
            return bad(unit, k) if callable(bad) else bad
        return keep_last(unit, k)
    method.__name__ = "flaky"
    return method


@pytest.mark.parametrize("bad,message", [
    (RuntimeError("out of ideas"), "method 'flaky' failed on encoder.layers.1.ffn: RuntimeError: out of ideas"),
    (lambda unit, k: torch.zeros(unit.n_channels - 1, dtype=torch.long), r"shape \(63,\); expected \(64,\)"),
    (lambda unit, k: torch.full((unit.n_channels,), k, dtype=torch.long), r"labels in \[48, 48\]; they must lie in \[-1, 47\]"),
    (lambda unit, k: torch.full((unit.n_channels,), -2, dtype=torch.long), r"must lie in \[-1, 47\]"),
    (lambda unit, k: torch.zeros(unit.n_channels, dtype=torch.long), r"left new channel\(s\) \[1, 2, 3, 4, 5\] without members"),
    (lambda unit, k: torch.zeros(unit.n_channels), "float32 labels; they must be integers"),
    (lambda unit, k: list(range(unit.n_channels)), "returned a list"),
    (lambda unit, k: torch.zeros(unit.n_channels, 1, dtype=torch.long), "shape"),
])
def test_a_bad_method_is_named_and_the_model_left_unchanged(bad, message):
    model = make_tiny_whisper()
    state, shapes = _state(model), widths(model)
    with pytest.raises(SpeechPruneError, match=message) as err:
        compress(model, method=_fails_on_layer_1(bad), sparsity=0.25, scope="ffn", progress=False)
    assert "flaky" in str(err.value)
    assert widths(model) == shapes  # layer 0 was fine, and still was not touched
    assert _unchanged(model, state)
    assert not getattr(model.config, "speechprune", None)


def test_explicit_budget_changes_only_the_named_units():
    model = make_tiny_whisper()
    keep = {"encoder.layers.1.ffn": 40, "decoder.layers.0.self_attn": 2}
    report = compress(model, budget=keep, progress=False)
    after = widths(model)
    assert {n: after[n] for n in keep} == keep
    assert after["encoder.layers.0.ffn"] == 64 and after["decoder.layers.1.self_attn"] == 4
    assert report.allocation == "explicit"
    assert report.scope == ["encoder.ffn", "decoder.attention"]
    assert report.sparsity == pytest.approx(1 - 42 / 68)
    _forward(model, _input("whisper"))


def test_allocate_output_is_an_explicit_budget():
    a, b = make_tiny_hubert(), make_tiny_hubert()
    keep = allocate(units_in_scope(a, "ffn"), 0.4, "variance")
    compress(a, sparsity=0.4, allocation="variance", progress=False)
    compress(b, budget=keep, progress=False)
    assert widths(a) == widths(b)
    x = _input("hubert")
    torch.testing.assert_close(_forward(a, x), _forward(b, x))


@pytest.mark.parametrize("kwargs,message", [
    (dict(budget={"encoder.layers.9.ffn": 3}), "does not have"),
    (dict(budget={"encoder.layers.0.ffn": 0}), "integer from 1 to 64"),
    (dict(budget={"encoder.layers.0.ffn": 65}), "integer from 1 to 64"),
    (dict(budget={"encoder.layers.0.ffn": 3.5}), "integer from 1 to 64"),
    (dict(budget={}), "non-empty dict"),
    (dict(budget={"encoder.layers.0.ffn": 3}, sparsity=0.2), "either sparsity or budget"),
    (dict(budget={"encoder.layers.0.ffn": 3}, scope="attention"), "outside the scope"),
])
def test_bad_budgets_are_refused_before_any_change(kwargs, message):
    model = make_tiny_hubert()
    state = _state(model)
    with pytest.raises(SpeechPruneError, match=message):
        compress(model, progress=False, **kwargs)
    assert _unchanged(model, state)


# --- entry points -------------------------------------------------------------------------

PLUGIN = '''
import torch


def keep_last(unit, k):
    labels = torch.full((unit.n_channels,), -1, dtype=torch.long)
    labels[-k:] = torch.arange(k)
    return labels
'''


def _install_plugin(root: Path) -> Path:
    """A package ``sp_plugin`` with its ``.dist-info``, as pip would leave it, plus a broken entry point."""
    (root / "sp_plugin").mkdir(parents=True)
    (root / "sp_plugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "sp_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: sp-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[speechprune.methods]\n"
        "plugin-keep-last = sp_plugin:keep_last\n"
        "broken = sp_plugin_missing.module:method\n"
    )
    return root


def test_entry_points_register_and_a_broken_one_is_reported(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(_install_plugin(tmp_path / "site")))
    try:
        with pytest.warns(RuntimeWarning, match="'broken'.*not loaded.*sp_plugin_missing"):
            errors = load_entry_points(reload=True)
        assert list(errors) == ["broken"] and "ModuleNotFoundError" in errors["broken"]
        assert "plugin-keep-last" in available_methods()
        model = make_tiny_hubert()
        report = compress(model, method="plugin-keep-last", sparsity=0.5, progress=False)
        assert report.method == "plugin-keep-last" and widths(model)["encoder.layers.1.ffn"] == 32
        with pytest.raises(SpeechPruneError, match="unknown method 'broken'.*failed to load: broken"):
            compress(make_tiny_hubert(), method="broken", progress=False)
    finally:
        unregister_method("plugin-keep-last")
        monkeypatch.undo()  # the plug-in leaves sys.path: forget its entry points for later tests
        load_entry_points(reload=True)


def test_cli_runs_a_method_installed_through_an_entry_point(tmp_path):
    site = _install_plugin(tmp_path / "site")
    model = tmp_path / "tiny"
    make_tiny_hubert().save_pretrained(model)
    out = tmp_path / "pruned"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")])))
    run = subprocess.run(
        [sys.executable, "-m", "speechprune", "compress", str(model), "--method", "plugin-keep-last",
         "--sparsity", "0.25", "--out", str(out), "--device", "cpu"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "method plug-in 'broken' was not loaded" in run.stderr
    assert "plugin-keep-last" in run.stdout
    loaded = load_checkpoint(out)
    assert widths(loaded)["encoder.layers.0.ffn"] == 48
    dense = make_tiny_hubert()
    torch.testing.assert_close(loaded.hubert.encoder.layers[0].feed_forward.intermediate_dense.weight,
                               dense.hubert.encoder.layers[0].feed_forward.intermediate_dense.weight[16:])
    help_text = subprocess.run([sys.executable, "-m", "speechprune", "compress", "--help"],
                               capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600).stdout
    assert "plugin-keep-last" in help_text and "magnitude" in help_text


def test_public_api_exports_the_registry():
    assert speechprune.register_method is register_method
    assert {"compress", "register_method", "allocate"} <= set(speechprune.__all__)


# --- one default-device rule -------------------------------------------------------------

def test_compress_evaluate_and_compare_default_to_cuda_when_available(monkeypatch, tmp_path):
    from speechprune.cli import main
    from speechprune.device import default_device
    from speechprune.experiment import run_comparison
    from speechprune.options import CompressionOptions

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert default_device() == "cuda" and default_device("cpu") == "cpu"
    seen = []

    def load_model(spec, device="cpu", dtype=None, allow_new_weights=False):
        seen.append(device)
        raise SpeechPruneError("stop here")

    for module in ("speechprune.commands", "speechprune.experiment"):
        monkeypatch.setattr(sys.modules[module], "load_model", load_model)
    assert main(["compress", "some-model", "--sparsity", "0.2", "--out", str(tmp_path / "o")]) == 2
    assert main(["evaluate", "some-model", "--max-samples", "1"]) == 2
    with pytest.raises(SpeechPruneError, match="stop here"):
        run_comparison("some-model", options=[CompressionOptions()], max_samples=1, progress=False)
    assert seen == ["cuda", "cuda", "cuda"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["evaluate", "some-model", "--max-samples", "1"]) == 2
    assert seen[-1] == "cpu"


def test_a_plugin_method_runs_in_compare_and_study_like_a_builtin(tmp_path):
    """The plug-in of an entry point runs wherever the built-ins do: ``compare --method`` and a study file."""
    site = _install_plugin(tmp_path / "site")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(site), str(ROOT), os.environ.get("PYTHONPATH")])))
    common = ["--model", "embedded:whisper-tiny.en", "--max-samples", "1", "--device", "cpu"]
    run = subprocess.run(
        [sys.executable, "-m", "speechprune", "compare", *common, "--method", "plugin-keep-last", "--sparsity", "0.1",
         "--out", str(tmp_path / "compare")], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900)
    assert run.returncode == 0, run.stderr
    saved = json.loads((tmp_path / "compare" / "results.json").read_text())
    methods = [(r.get("compression") or {}).get("method") for r in saved["records"]]
    assert methods == [None, "plugin-keep-last", "magnitude"]
    plugin = saved["records"][1]["compression"]
    assert plugin["seed"] is None and plugin["features"] == "none"  # it takes no seed and reads no features
    (tmp_path / "plugin.toml").write_text(textwrap.dedent('''
        name = "plugin"
        models = ["embedded:whisper-tiny.en"]
        data = ["embedded"]
        max_samples = 1
        seeds = 2
        dense = false
        settings = [{scope = "encoder.ffn", sparsity = 0.1}]
        options = [{method = "plugin-keep-last"}, {method = "magnitude"}]
    '''))
    run = subprocess.run(
        [sys.executable, "-m", "speechprune", "study", str(tmp_path / "plugin.toml"), "--out",
         str(tmp_path / "plugin.json"), "--device", "cpu"], capture_output=True, text=True, env=env, cwd=tmp_path,
        timeout=900)
    assert run.returncode == 0, run.stderr
    records = json.loads((tmp_path / "plugin.json").read_text())["records"]
    assert sorted((r["method"], r["seed"]) for r in records) == [("magnitude", None), ("plugin-keep-last", None)]
