"""The paper's scale, end to end, on stand-ins with the real shapes (``scripts/standins.py``).

Run by ``pytest -q`` and CI: the chapters never rebind a name they imported from the package, and
(marked ``slow``, about a minute) the stand-in writer on tiny configs (same code, smaller numbers)
writes models and LibriSpeech that the package loads offline under the unchanged ids, and refuses
what is not there in one line.

``pytest -m full_scale`` (not run by default: see ``tests/conftest.py``) writes the real-size
stand-ins (HuBERT-large, Whisper-large-v3: about 4.5 GB; or reuses ``$SPEECHPRUNE_STANDINS``) and
runs chapters 3, 4 and 5 with papermill at ``SCALE = "colab"`` and ``"paper"`` on the CPU
(``DEVICE = "cpu"``), the paper scale a second time once its full-scale results files exist.
Random weights transcribe noise: these tests prove that every cell of the full-scale path runs.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "standins.py"
CHAPTERS = sorted((ROOT / "notebooks").glob("0*.ipynb"))
HUBERT, WHISPER = "facebook/hubert-large-ls960-ft", "openai/whisper-large-v3"


def offline_env(out: Path) -> dict[str, str]:
    """The process environment that makes the stand-ins resolve offline under the unchanged ids."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(out), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def write_standins(out: Path, *extra: str) -> None:
    subprocess.run([sys.executable, str(SCRIPT), str(out), *extra], check=True, cwd=ROOT,
                   env=offline_env(out), stdout=subprocess.DEVNULL)


def run_offline(out: Path, code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter with the stand-ins' offline environment (the hub libraries
    read it when imported, so it cannot be set in this process)."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env=offline_env(out), timeout=600)


# ----------------------------------------------------------------------------- the chapters' names

def rebound_imports(cells: list[str]) -> list[str]:
    """Names that a later import binds to another module's object than an earlier import did."""
    bound: dict[str, str] = {}
    problems = []
    for source in cells:
        lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    name, origin = alias.asname or alias.name, f"{node.module}.{alias.name}"
                    if bound.get(name, origin) != origin:
                        problems.append(f"{name}: {bound[name]} then {origin}")
                    bound[name] = origin
    return problems


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_no_chapter_rebinds_a_name_it_imported(path):
    nb = nbformat.read(path, as_version=4)
    assert rebound_imports([c.source for c in nb.cells if c.cell_type == "code"]) == []


def test_the_rebinding_check_finds_the_bug_it_is_for():
    cells = ["from speechprune.book import comparison_table", "from speechprune.study import comparison_table",
             "comparison_table(setting, saved)"]
    assert rebound_imports(cells) == ["comparison_table: speechprune.book.comparison_table then "
                                      "speechprune.study.comparison_table"]
    assert rebound_imports(["from speechprune.study import comparison_table as seeds_table", *cells[:1]]) == []


# ----------------------------------------------------------------------------- tiny stand-ins

@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("standins-tiny")
    write_standins(out, "--tiny", "--utterances", "2")
    return out


@pytest.mark.slow
def test_tiny_standins_load_offline_under_the_unchanged_ids(tiny):
    code = f"""
import json
from speechprune.data import load_speech, load_training_speech
from speechprune.models import load_model
out = {{}}
for name in ({HUBERT!r}, {WHISPER!r}):
    model, processor = load_model(name)
    out[name] = dict(cls=type(model).__name__, processor=type(processor).__name__,
                     dtype=str(next(model.parameters()).dtype), config=model.config.to_dict())
tok = load_model({WHISPER!r})[1].tokenizer
out["ids"] = tok.convert_tokens_to_ids(["<|su|>", "<|yue|>", "<|translate|>", "<|transcribe|>", "<|notimestamps|>",
                                        "<|0.00|>", "<|30.00|>"])
out["len"] = len(tok)
out["roundtrip"] = tok.decode(tok("hello world").input_ids, skip_special_tokens=True)
for spec in ("librispeech:test-clean", "librispeech:test-other", "librispeech:dev-clean",
             "librispeech:train-clean-100", {str(tiny / "LibriSpeech" / "test-clean")!r}):
    for n in (None, 1):
        speech = load_speech(spec, max_samples=n)
        out[f"{{spec}}:{{n}}"] = [(u.id, u.text, round(u.duration, 2)) for u in speech]
train = load_training_speech("librispeech:train-clean-100")
out["train"] = [train[i].id for i in range(len(train))]
print(json.dumps(out))
"""
    result = run_offline(tiny, code)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    hubert, whisper = out[HUBERT], out[WHISPER]
    assert (hubert["cls"], hubert["processor"], hubert["dtype"]) == ("HubertForCTC", "Wav2Vec2Processor", "torch.float32")
    assert hubert["config"]["vocab_size"] == 32 and hubert["config"]["do_stable_layer_norm"]
    assert hubert["config"]["feat_extract_norm"] == "layer" and len(hubert["config"]["conv_dim"]) == 7
    assert (whisper["cls"], whisper["processor"], whisper["dtype"]) == (  # stored in float16 as on the hub,
        "WhisperForConditionalGeneration", "WhisperProcessor", "torch.float32")  # widened on a CPU by load_model
    assert whisper["config"]["vocab_size"] == 51866 == out["len"] and whisper["config"]["num_mel_bins"] == 128
    assert out["ids"] == [50357, 50358, 50359, 50360, 50364, 50365, 51865]
    assert out["roundtrip"].strip() == "hello world"
    clean = out["librispeech:test-clean:None"]
    assert len(clean) == 2 and out["librispeech:test-clean:1"] == clean[:1]
    assert out[f"{tiny / 'LibriSpeech' / 'test-clean'}:None"] == clean, "the OpenSLR folder holds the hub rows"
    assert all(text == text.upper() and "," not in text for _, text, _ in clean)
    ids = {k: {u[0] for u in v} for k, v in out.items() if k.endswith(":None")}
    test_ids = ids["librispeech:test-clean:None"] | ids["librispeech:test-other:None"]
    assert not test_ids & (ids["librispeech:dev-clean:None"] | ids["librispeech:train-clean-100:None"])
    assert out["train"] == [u[0] for u in out["librispeech:train-clean-100:None"]]


@pytest.mark.slow
def test_the_whisper_standin_takes_its_tokenizer_from_a_carried_base_folder(tiny, tmp_path):
    """A GPU server without the embedded packages gets Whisper base's four files carried (--base):
    the stand-in it writes has the same tokenizer and generation config as the default's."""
    import shutil

    from speechprune.models import ensure_embedded

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from standins import BASE_FILES
    finally:
        sys.path.remove(str(SCRIPT.parent))
    base = tmp_path / "base"
    base.mkdir()
    for name in BASE_FILES:
        shutil.copy(ensure_embedded("whisper-base") / name, base / name)
    out = tmp_path / "standins"
    write_standins(out, "--tiny", "--only", "whisper", "--base", str(base))
    snapshot = lambda root: next((root / "hub" / "models--openai--whisper-large-v3" / "snapshots").iterdir())
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "normalizer.json"):
        assert (snapshot(out) / name).read_bytes() == (snapshot(tiny) / name).read_bytes(), name
    (base / "tokenizer.json").unlink()
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "other"), "--tiny", "--only", "whisper",
                             "--base", str(base)], capture_output=True, text=True, cwd=ROOT, env=offline_env(out))
    assert result.returncode == 2 and "lacks tokenizer.json" in result.stderr
    assert not (tmp_path / "other").exists(), "nothing is written before the check"


@pytest.mark.slow
def test_the_gpu_script_runs_dry_on_the_cpu_and_a_second_call_goes_on(tmp_path):
    """scripts/gpu_full_scale.sh, the one prepared call for a lent GPU, dry on the CPU: tiny stand-ins,
    one case; a second call (a warm machine keeps $WORK) writes no stand-ins and skips the done case."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(offline_env(tmp_path), PYTHON=sys.executable, WORK=str(work), DEVICES="cpu", METHODS="magnitude",
               MODELS="hubert-large", STANDINS_ARGS="--tiny --utterances 2 --only hubert,speech", FROM="", BUDGET="400")
    run = lambda: subprocess.run(["bash", str(ROOT / "scripts" / "gpu_full_scale.sh"), str(out)], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=600)
    first = run()
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    status = (out / "status.txt").read_text()
    assert "stand-ins: exit 0" in status and "bench_full_scale --devices cpu: exit 0" in status, status
    cases = json.loads((out / "full_scale.json").read_text())["cases"]
    assert [(c["model"], c["method"], c["device"]) for c in cases] == [("hubert-large", "magnitude", "cpu")]
    assert "error" not in cases[0] and cases[0]["eval_utterances"] == 2
    page = (out / "page.md").read_text()
    assert page.startswith("| stand-in, setting |") and "HuBERT-large, encoder FFN 50% | magnitude pruning | cpu" in page
    second = run()
    assert second.returncode == 0, second.stderr[-2000:]
    assert "stand-ins" not in (out / "status.txt").read_text()
    assert "done before, skipped" in (out / "bench.txt").read_text()
    assert json.loads((out / "full_scale.json").read_text())["cases"] == cases


@pytest.mark.slow
def test_tiny_standins_refuse_what_is_not_there_in_one_line(tiny):
    code = """
from speechprune.data import load_speech, load_training_speech
from speechprune.errors import SpeechPruneError
from speechprune.models import load_model
for call, arg in ((load_model, "openai/whisper-medium"), (load_speech, "librispeech:dev-other"),
                  (load_speech, "librispeech:test-cleen"), (load_training_speech, "librispeech:train-clean-360")):
    try:
        call(arg)
    except SpeechPruneError as err:
        print(repr(str(err)))
    else:
        print("loaded", arg)
"""
    result = run_offline(tiny, code)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ast.literal_eval(line) for line in result.stdout.strip().splitlines()]
    assert len(lines) == 4 and all("\n" not in line for line in lines)
    model, dev_other, typo, train = lines
    assert "'openai/whisper-medium' is not in the Hugging Face cache" in model
    assert "unset HF_HUB_OFFLINE" in model and "local model folder" in model
    for message, subset in ((dev_other, "dev-other"), (train, "train-clean-360")):
        assert f"librispeech:{subset}" in message and "needs a network" in message
        assert f"{subset}.tar.gz from https://www.openslr.org/12" in message and f"LibriSpeech/{subset}" in message
    assert "unknown LibriSpeech subset 'test-cleen'" in typo and "local OpenSLR folder" in typo


def test_the_v3_tokenizer_moves_every_id_from_yue_on():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import standins
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    base = {"added_tokens": [{"id": i, "content": c} for i, c in
                             [(50257, "<|endoftext|>"), (50357, "<|su|>"), (50358, "<|translate|>")]
                             + [(50359 + k, f"<|{k}|>") for k in range(51865 - 50359)]],
            "post_processor": {"special_tokens": {"<|translate|>": {"ids": [50358]}, "<|endoftext|>": {"ids": [50257]}}}}
    base["added_tokens"] += [{"id": i, "content": f"<|x{i}|>"} for i in range(50258, 50357)]
    v3 = standins.v3_tokenizer_json(base)
    by_name = {t["content"]: t["id"] for t in v3["added_tokens"]}
    assert by_name["<|su|>"] == 50357 and by_name["<|yue|>"] == 50358 and by_name["<|translate|>"] == 50359
    assert max(by_name.values()) == 51865 and len(by_name) == 51866 - 50257
    assert v3["post_processor"]["special_tokens"]["<|translate|>"]["ids"] == [50359]
    assert v3["post_processor"]["special_tokens"]["<|endoftext|>"]["ids"] == [50257]


# ----------------------------------------------------------------------------- the costs page

def _bench_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_full_scale", ROOT / "benchmarks" / "bench_full_scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_costs_page_shows_the_benchmark_file_as_it_is():
    """book/full_scale.md's table of costs is bench_full_scale.py --page of the saved file, so that no
    figure on the page is typed by hand or left behind by a rerun."""
    bench = _bench_module()
    page = (ROOT / "book" / "full_scale.md").read_text(encoding="utf-8")
    start, end = bench.PAGE_MARKERS
    assert page.count(start) == 1 and page.count(end) == 1
    shown = page.split(start)[1].split(end)[0].strip()
    results = bench.load_results(ROOT / "results" / "benchmarks" / "full_scale.json")
    assert shown == bench.page_table(results), "run: python benchmarks/bench_full_scale.py --page"
    cases = {(c["model"], c["method"], c["device"]) for c in results["cases"] if "error" not in c}
    for model in ("hubert-large", "whisper-large-v3"):  # every method measured at the real shapes on the CPU
        assert {(model, m, "cpu") for m in ("paper", "recommended", "pairs-refit-2026", "pairs-variance-2026",
                                            "pairs-2026", "magnitude")} <= cases
    # the README's sentence on the real sizes quotes the same file
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    cpu = {(c["model"], c["method"]): c for c in results["cases"] if c["device"] == "cpu" and "error" not in c}
    w = {m: f"{cpu[('whisper-large-v3', m)]['compress_seconds']:.0f} s" for m in ("paper", "recommended", "magnitude")}
    h = {m: f"{cpu[('hubert-large', m)]['compress_seconds']:.0f} s" for m in ("paper", "recommended", "magnitude")}
    assert (f"takes {w['paper']} with `--recipe paper`'s k-means, {w['recommended']} with `--recipe recommended` and "
            f"{w['magnitude']} with magnitude pruning") in readme
    assert f"at 50% takes {h['paper']}, {h['recommended']} and {h['magnitude']}." in readme
    per_clip = sorted(cpu[("whisper-large-v3", m)]["eval_seconds_per_utterance"] for m in w)
    assert f"takes {per_clip[0]:.0f} to {per_clip[-1]:.0f} s to transcribe" in readme
    # and so do the page's sentences on closest pairs (without the refit) against k-means
    words = " ".join(page.split())
    for model, name in (("hubert-large", "HuBERT-large"), ("whisper-large-v3", "")):
        rec, km = (cpu[(model, m)]["compress_seconds"] for m in ("pairs-variance-2026", "paper"))
        assert rec <= 2 * km, "closest pairs first stays within 2x k-means' time at the real shapes"
        assert f"{rec:.0f} s against {km:.0f} s" in words and f"({rec / km:.2f}" in words, model
    assert f"takes {per_clip[0]:.0f} to {per_clip[-1]:.0f} s to transcribe" in words


def test_the_page_table_marks_half_precision_cpu_runs_and_failures():
    bench = _bench_module()
    base = dict(model="whisper-large-v3", device="cpu", compress_seconds=1.0, compress_peak_rss_gib=2.0,
                compress_rss_above_model_gib=0.5, eval_seconds_per_utterance=3.0, eval_peak_rss_gib=4.0,
                machine=dict(load_average=[2.04, 1, 1]))
    rows = bench.page_table({"cases": [dict(base, method="magnitude", dtype="torch.float16"),
                                       dict(model="hubert-large", method="paper", device="cpu", error="OOM")]}
                            ).splitlines()[2:]
    assert rows[0].startswith("| HuBERT-large, encoder FFN 50% | `--recipe paper` (k-means) | cpu | failed: OOM")
    assert rows[1] == ("| Whisper-large-v3, both stacks' FFN 10% | magnitude pruning, float16 | cpu | 1 | 2.0 (0.5) | 3.0 | "
                       "4.0 | 2.0 |")


# ----------------------------------------------------------------------------- full scale

@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    """Real-size stand-ins written now (minutes), or those in ``$SPEECHPRUNE_STANDINS`` (any size: a
    folder written with ``--tiny`` runs the same cells in minutes, as a check of the path alone)."""
    given = os.environ.get("SPEECHPRUNE_STANDINS")
    out = Path(given) if given else tmp_path_factory.mktemp("standins")
    if not all(k in manifest(out) for k in ("hubert", "whisper", "speech")):
        write_standins(out)
    return out


def manifest(out: Path) -> dict:
    path = out / "standins.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def run_chapter(chapter: str, standins: Path, workdir: Path, **parameters) -> tuple[nbformat.NotebookNode, float]:
    """Execute a chapter with papermill (as scripts/build_book.py does) in ``workdir``, offline on the stand-ins."""
    import papermill

    source = ROOT / "notebooks" / chapter
    target = workdir / f"{source.stem}-{parameters.get('SCALE')}-{time.monotonic_ns()}.ipynb"
    saved = dict(os.environ)
    os.environ.update(offline_env(standins))
    start = time.perf_counter()
    try:
        papermill.execute_notebook(str(source), str(target), parameters=dict(parameters, DEVICE="cpu"),
                                   kernel_name="python3", cwd=str(workdir), progress_bar=False, start_timeout=120)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    seconds = time.perf_counter() - start
    print(f"{chapter} {parameters}: {seconds:.0f} s")
    return nbformat.read(target, as_version=4), seconds


def printed(nb: nbformat.NotebookNode) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")


@pytest.mark.full_scale
@pytest.mark.parametrize("chapter,model", [("03_hubert_large.ipynb", HUBERT), ("04_whisper_large_v3.ipynb", WHISPER)])
def test_chapter_runs_at_colab_and_paper_scale_and_shows_saved_full_scale_runs(chapter, model, standins, tmp_path):
    nb, _ = run_chapter(chapter, standins, tmp_path, SCALE="colab", MAX_SAMPLES=2, BATCH_SIZE=2)
    text = printed(nb)
    assert f"SCALE = 'colab': {model} on librispeech:test-clean, librispeech:test-other, 2 utterances each" in text
    assert "No full-scale results file" in text
    # the colab preset's comparison over 3 k-means seeds, per test set, with its sentences
    assert text.count("the paper's method: median over k-means seeds 0-2") == 2
    assert "this project's recommendation" in text and "the recommended recipe" in text.lower()
    # every utterance of the stand-in test sets: a full-scale run, saved under RESULTS_DIR (one seed in
    # the comparison over seeds, to keep the two paper-scale runs short on a CPU)
    nb, _ = run_chapter(chapter, standins, tmp_path, SCALE="paper", MAX_SAMPLES=0, BATCH_SIZE=2, SEEDS=1)
    text = printed(nb)
    assert f"SCALE = 'paper': {model} on librispeech:test-clean, librispeech:test-other, all utterances each" in text
    saved = sorted(p.name for p in (tmp_path / "results").rglob("*.json"))
    assert saved == ["test-clean.json", "test-other.json"], saved
    nb, _ = run_chapter(chapter, standins, tmp_path, SCALE="paper", MAX_SAMPLES=0, BATCH_SIZE=2, SEEDS=0)
    text = printed(nb)
    n = len(manifest(standins)["speech"]["test-clean"])
    assert f"full scale: librispeech:test-clean ({n} utt.)" in text and "No full-scale results file" not in text


@pytest.mark.full_scale
def test_finetuning_chapter_runs_on_the_hubert_large_standin(standins, tmp_path):
    common = dict(BATCH_SIZE=2, TRAIN_SAMPLES=2, TEST_SAMPLES=2)
    nb, _ = run_chapter("05_finetuning.ipynb", standins, tmp_path, SCALE="colab", **common)
    text = printed(nb)
    assert f"Run at SCALE = 'colab': {HUBERT}" in text and "librispeech:dev-clean" in text
    assert sorted(p.name for p in (tmp_path / "finetune-runs").iterdir()) == ["cluster", "magnitude"]
    nb, _ = run_chapter("05_finetuning.ipynb", standins, tmp_path, SCALE="paper", EPOCHS=1, BATCH_SIZE=2,
                        OUT_DIR="finetune-paper")
    assert f"Run at SCALE = 'paper': {HUBERT}" in printed(nb) and "librispeech:train-clean-100" in printed(nb)


@pytest.mark.full_scale
def test_finetuning_the_pruned_hubert_large_standin_under_torchrun_with_two_cpu_processes(standins, tmp_path):
    """The command chapter 5 shows for several GPUs, here with 2 CPU processes (gloo), on the real shapes:
    compress the HuBERT-large stand-in, then fine-tune it on the LibriSpeech stand-in for 2 steps."""
    env = dict(offline_env(standins), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    pruned, out = tmp_path / "pruned", tmp_path / "finetuned"
    done = subprocess.run([sys.executable, "-m", "speechprune", "compress", HUBERT, "--method", "magnitude",
                           "--sparsity", "0.5", "--scope", "ffn", "--out", str(pruned)],
                          capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    torchrun = Path(sys.executable).with_name("torchrun")
    start = time.perf_counter()
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "speechprune", "finetune",
                           str(pruned), "--data", "librispeech:train-clean-100", "--batch-size", "1",
                           "--max-steps", "2", "--logging-steps", "1", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=3600)
    print(f"torchrun, 2 CPU processes, 2 steps on the HuBERT-large stand-in: {time.perf_counter() - start:.0f} s")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((out / "finetune.json").read_text())
    assert record["settings"]["processes"] == 2 and record["settings"]["parallel"] == "distributed"
    assert record["results"]["global_step"] == 2
    from speechprune import load_checkpoint
    from speechprune.structure import iter_units

    widths = [u.n_channels for u in iter_units(load_checkpoint(out)) if u.part.endswith("ffn")]
    assert widths and set(widths) == {2048}, "HuBERT-large's 4096 feed-forward channels, halved, kept through training"
