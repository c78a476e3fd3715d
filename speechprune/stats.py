"""Statistics for pruned WER over k-means seeds and utterances (book page "How we measure").

A pruned model's WER depends on two random things: the k-means seed (which partition was
found) and the utterances (which clips happened to be in the test set). Every figure here
accounts for both:

* per setting: the median and range of corpus WER over seeds;
* a 95% interval from a bootstrap that resamples utterances and seeds together;
* the paired difference A − B (same utterances, same seeds where both have seeds), with its
  interval, and the share of seeds in which A is lower;
* :func:`sentence`, which words a comparison and refuses to name a winner when the data
  cannot decide.

Inputs are study records (:mod:`speechprune.study`): each has ``utterance_ids``,
``utterance_errors`` (S+D+I per utterance), ``utterance_words`` and ``seed``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import numpy as np

MIN_SEEDS = 5
MIN_UTTERANCES = 30
N_BOOT = 2000
LEVEL = 0.95


@dataclass
class Matrix:
    """Errors per (seed, utterance) and words per utterance of one setting."""

    errors: np.ndarray  # [n_seeds, n_utterances]
    words: np.ndarray  # [n_utterances]
    seeds: list  # seed of each row (None for a method without one)
    ids: list[str]

    @property
    def wers(self) -> np.ndarray:
        """Corpus WER (percent) of each seed."""
        return 100.0 * self.errors.sum(1) / self.words.sum()


def matrix(records: list[dict]) -> Matrix:
    """Stack records of one setting (one per seed) on their common utterance order."""
    if not records:
        raise ValueError("no records")
    ids = list(records[0]["utterance_ids"])
    for r in records[1:]:
        if list(r["utterance_ids"]) != ids:
            raise ValueError("records were not measured on the same utterances")
    errors = np.array([r["utterance_errors"] for r in records], dtype=float)
    words = np.array(records[0]["utterance_words"], dtype=float)
    return Matrix(errors, words, [r.get("seed") for r in records], ids)


def _pair(a: Matrix, b: Matrix) -> tuple[np.ndarray, np.ndarray, list]:
    """Row-aligned error matrices of A and B: by seed when both depend on a seed, else the seedless
    side (magnitude pruning, closest pairs) broadcast against every seed of the other."""
    if a.ids != b.ids:
        raise ValueError("A and B were not measured on the same utterances")
    a_seeded, b_seeded = any(s is not None for s in a.seeds), any(s is not None for s in b.seeds)
    if a_seeded and b_seeded:  # only seeds both have: a seed that one side lacks pairs with nothing
        common = [s for s in a.seeds if s in b.seeds]
        if not common:
            raise ValueError("A and B share no seed to pair")
        ea = a.errors[[a.seeds.index(s) for s in common]]
        eb = b.errors[[b.seeds.index(s) for s in common]]
        return ea, eb, common
    if not b_seeded:
        return a.errors, np.broadcast_to(b.errors[:1], a.errors.shape), a.seeds
    return np.broadcast_to(a.errors[:1], b.errors.shape), b.errors, b.seeds


def _indices(n_seeds: int, n_utts: int, n_boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, n_seeds, size=(n_boot, n_seeds)), rng.integers(0, n_utts, size=(n_boot, n_utts))


def _boot_medians(errors: np.ndarray, words: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """Median over resampled seeds of corpus WER on resampled utterances, per bootstrap draw."""
    s_idx, u_idx = _indices(errors.shape[0], errors.shape[1], n_boot, seed)
    out = np.empty(n_boot)
    chunk = max(1, 2_000_000 // max(1, errors.shape[0] * errors.shape[1]))
    for start in range(0, n_boot, chunk):
        s, u = s_idx[start:start + chunk], u_idx[start:start + chunk]
        picked = errors[s[:, :, None], u[:, None, :]].sum(2)  # [b, seeds]
        out[start:start + chunk] = np.median(100.0 * picked / words[u].sum(1)[:, None], axis=1)
    return out


def _interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    tail = 100.0 * (1.0 - level) / 2
    return float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))


@dataclass
class Summary:
    median: float
    low: float  # smallest WER over seeds
    high: float  # largest
    interval: tuple[float, float]  # bootstrap over seeds and utterances, of the median
    n_seeds: int
    n_utterances: int
    wers: list[float]


def summarize(records: list[dict], *, n_boot: int = N_BOOT, seed: int = 0) -> Summary:
    """Median and range of WER over seeds, with the 95% seed-and-utterance bootstrap interval."""
    m = matrix(records)
    wers = m.wers
    return Summary(float(np.median(wers)), float(wers.min()), float(wers.max()),
                   _interval(_boot_medians(m.errors, m.words, n_boot, seed)), len(wers), len(m.ids),
                   [float(w) for w in wers])


@dataclass
class Difference:
    median: float  # median over seeds of WER(A) - WER(B), points
    interval: tuple[float, float]
    lower: int  # seeds where A is lower
    n_seeds: int
    n_utterances: int
    seeded: bool  # does either side depend on a k-means seed?
    differences: list[float]


def paired_difference(a: list[dict], b: list[dict], *, n_boot: int = N_BOOT, seed: int = 0) -> Difference:
    """WER(A) − WER(B) on the same utterances (and the same seeds where both have seeds).

    The interval resamples seeds and utterances together; the share counts seeds where A is lower.
    """
    ma, mb = matrix(a), matrix(b)
    ea, eb, seeds = _pair(ma, mb)
    diff = np.asarray(ea, dtype=float) - np.asarray(eb, dtype=float)
    per_seed = 100.0 * diff.sum(1) / ma.words.sum()
    seeded = any(s is not None for s in ma.seeds + mb.seeds)
    return Difference(float(np.median(per_seed)), _interval(_boot_medians(diff, ma.words, n_boot, seed)),
                      int((per_seed < 0).sum()), len(per_seed), len(ma.ids), seeded,
                      [float(x) for x in per_seed])


def undecided_reason(d: Difference, *, min_seeds: int = MIN_SEEDS, min_utterances: int = MIN_UTTERANCES) -> str | None:
    """Why the data cannot name a winner (None when they can)."""
    if d.n_utterances < min_utterances:
        return f"only {d.n_utterances} utterances (at least {min_utterances} needed)"
    if d.seeded and d.n_seeds < min_seeds:
        return f"only {d.n_seeds} seed{'s' if d.n_seeds != 1 else ''} (at least {min_seeds} needed)"
    if d.interval[0] <= 0.0 <= d.interval[1]:
        return "the 95% interval contains 0"
    return None


def _points(x: float) -> str:
    return f"{x:+.1f}".replace("-", "−")


def sentence(d: Difference, a: str = "A", b: str = "B", **rules) -> str:
    """The comparison in words, e.g. "cluster is lower than magnitude in 5 of 5 seeds, median
    difference −41.0 points [−55.0, −30.0]"; says the data cannot decide when they cannot."""
    lo, hi = d.interval
    numbers = f"median difference {_points(d.median)} points [{_points(lo)}, {_points(hi)}]"
    plural = "s" if d.n_seeds != 1 else ""
    seeds = f"in {d.lower} of {d.n_seeds} seed{plural}" if d.seeded else "on the same utterances"
    why = undecided_reason(d, **rules)
    if why:
        return (f"the data cannot decide between {a} and {b}: {why}; {a} is lower {seeds}"
                if d.seeded else f"the data cannot decide between {a} and {b}: {why}") + f", {numbers}"
    if d.median < 0:
        return f"{a} is lower than {b} {seeds}, {numbers}"
    higher = f"in {d.n_seeds - d.lower} of {d.n_seeds} seed{plural}" if d.seeded else "on the same utterances"
    return f"{a} is higher than {b} {higher}, {numbers}"


def describe_summary(s: Summary) -> str:
    """``median 21.3% (range 15.5-71.7) [95%: 14.0, 60.2] over 5 seeds``."""
    if s.n_seeds == 1:
        return f"{s.median:.2f}% (single run) [95%: {s.interval[0]:.1f}, {s.interval[1]:.1f}]"
    return (f"median {s.median:.2f}% (range {s.low:.2f}-{s.high:.2f}) [95%: {s.interval[0]:.1f}, "
            f"{s.interval[1]:.1f}] over {s.n_seeds} seeds")


# --- study tables ------------------------------------------------------------------------------

def group_key(record: dict) -> tuple:
    """Everything that defines a setting and an option, but not the seed."""
    return (record["model"], record["data"], record.get("max_samples"), record["decoding"], record["scope"],
            record["sparsity"], record["method"], record["features"], record["allocation"], record["merge"],
            record["weighting"])


def setting_key(record: dict) -> tuple:
    return (record["model"], record["data"], record.get("max_samples"), record["decoding"], record["scope"],
            record["sparsity"])


def groups(records: list[dict]) -> dict[tuple, list[dict]]:
    """Records by setting and option, each list sorted by seed."""
    out: dict[tuple, list[dict]] = {}
    for r in records:
        out.setdefault(group_key(r), []).append(r)
    return {k: sorted(v, key=lambda r: -1 if r["seed"] is None else r["seed"]) for k, v in out.items()}


def option_label(record: dict) -> str:
    return record.get("label") or record["method"]


def comparisons(records: list[dict], baseline: str = "magnitude", *, n_boot: int = N_BOOT) -> list[dict]:
    """One row per (setting, option): the summary, the dense WER, and the paired difference with
    ``baseline`` (the run of that method in the same setting, at the same allocation when there is
    one, else at uniform allocation)."""
    rows = []
    by_group = groups(records)
    dense = {(g[0], g[1], g[2], g[3]): rs for g, rs in by_group.items() if g[6] == "dense"}
    for g, rs in by_group.items():
        if g[6] == "dense":
            continue
        if g[6] == baseline:
            base = []
        else:  # the baseline at the same allocation when there is one, else at uniform allocation
            same = {k[8]: v for k, v in by_group.items() if k[:6] == g[:6] and k[6] == baseline}
            base = [same[a] for a in (g[8], "uniform") if a in same][:1]
        row = dict(setting=g[:6], model=g[0], data=g[1], decoding=g[3], scope=g[4], sparsity=g[5],
                   option=option_label(rs[0]), method=g[6], records=rs, summary=summarize(rs, n_boot=n_boot))
        if base:
            row["difference"] = paired_difference(rs, base[0], n_boot=n_boot)
            row["sentence"] = sentence(row["difference"], row["option"], option_label(base[0][0]))
        d = dense.get(g[:4])
        if d:
            row["dense"] = d[0]["wer"]
        rows.append(row)
    return rows


def versus(records: list[dict], a: str, b: str, *, n_boot: int = N_BOOT, **where) -> tuple[Difference, str] | None:
    """Option ``a`` against option ``b`` (labels, as :func:`option_label` gives them) in the one
    setting of ``records`` that has both: the paired difference and its sentence.

    ``where`` narrows the records first (``scope="ffn"``, ``sparsity=0.1``, ``decoding="greedy"``
    ...); None when no setting has both options, and an error when several do.
    """
    chosen = [r for r in records if all(r.get(k) == v for k, v in where.items())]
    found: dict[tuple, dict[str, list[dict]]] = {}
    for rs in groups(chosen).values():
        label = option_label(rs[0])
        if label in (a, b):
            found.setdefault(setting_key(rs[0]), {})[label] = rs
    both = [v for v in found.values() if len(v) == 2]
    if not both:
        return None
    if len(both) > 1:
        raise ValueError(f"{len(both)} settings have both {a!r} and {b!r}: narrow them with scope=, sparsity= ...")
    d = paired_difference(both[0][a], both[0][b], n_boot=n_boot)
    return d, sentence(d, a, b)


def versus_dense(records: list[dict], a: str, *, n_boot: int = N_BOOT, **where) -> tuple[Difference, str] | None:
    """Option ``a`` against the uncompressed model it was pruned from, on the same utterances, over
    ``a``'s seeds: the paired difference (positive: the pruned model makes more errors) and a sentence
    that says whether the increase is significant (the 95% interval lies above 0).

    ``where`` narrows ``a``'s records (``scope=``, ``sparsity=`` ...); None when ``a`` or its dense
    model is missing.
    """
    runs = [r for r in records if option_label(r) == a and r["method"] != "dense"
            and all(r.get(k) == v for k, v in where.items())]
    if not runs:
        return None
    model, data, decoding = runs[0]["model"], runs[0]["data"], runs[0].get("decoding")
    dense = [r for r in records if r["method"] == "dense" and r["model"] == model and r["data"] == data
             and r.get("decoding") == decoding]
    if not dense:
        return None
    d = paired_difference(runs, dense[:1], n_boot=n_boot)
    lo, hi = d.interval
    seeds = f"median over {d.n_seeds} seed{'s' if d.n_seeds != 1 else ''}" if d.seeded else "one run"
    over = "seeds and utterances" if d.seeded else "utterances"
    numbers = f"{_points(d.median)} points ({seeds}; 95% interval over {over} [{_points(lo)}, {_points(hi)}])"
    if lo > 0:
        verdict = f"{a} has a significant WER increase over the uncompressed model: {numbers}"
    else:
        verdict = f"{a} has no significant WER increase over the uncompressed model: {numbers}"
    reason = undecided_reason(d)
    if reason and "interval contains 0" not in reason:
        verdict += f" (few data: {reason})"
    return d, verdict


def decodings(records: list[dict], a: str = "fallback", b: str = "greedy", *, n_boot: int = N_BOOT) -> list[dict]:
    """Each setting and option decoded both ways: WER over seeds under decoding ``a`` and ``b``, the
    share of insertions in the errors (loops are insertions), and the paired difference a − b on the
    same pruned models (same seeds) and the same utterances, with its sentence."""
    by_group = groups(records)
    rows = []
    for g, ra in by_group.items():
        if g[3] != a:
            continue
        rb = by_group.get(g[:3] + (b,) + g[4:])
        if not rb:
            continue
        seeds = {r["seed"] for r in ra} & {r["seed"] for r in rb}
        ra, rb = [r for r in ra if r["seed"] in seeds], [r for r in rb if r["seed"] in seeds]
        d = paired_difference(ra, rb, n_boot=n_boot)
        label = option_label(ra[0])

        def inserted(rs):
            errors = sum(r["substitutions"] + r["deletions"] + r["insertions"] for r in rs)
            return 100.0 * sum(r["insertions"] for r in rs) / errors if errors else 0.0

        rows.append(dict(model=g[0], data=g[1], scope=g[4], sparsity=g[5], option=label, method=g[6],
                         n_seeds=len(seeds), **{a: summarize(ra, n_boot=n_boot), b: summarize(rb, n_boot=n_boot)},
                         **{f"insertions_{a}": inserted(ra), f"insertions_{b}": inserted(rb)},
                         difference=d, sentence=sentence(d, f"{a} decoding", f"{b} decoding")))
    return rows


def study_summary(records: list[dict], n_boot: int = N_BOOT) -> str:
    """A plain-text table of a study: per setting and option, WER over seeds and the comparison."""
    lines = []
    rows = comparisons(records, n_boot=n_boot)
    for r in sorted(rows, key=lambda r: (str(r["setting"]), r["method"] != "magnitude", r["option"])):
        head = f"{r['model']} {r['scope']} {r['sparsity']:.0%} {r['data']} {r['decoding']}"
        dense = f" (dense {r['dense']:.2f}%)" if "dense" in r else ""
        lines.append(f"{head}{dense} | {r['option']}: {describe_summary(r['summary'])}")
        if "sentence" in r:
            lines.append(f"    {r['sentence']}")
    return "\n".join(lines)


def median(values) -> float:
    return float(statistics.median(values)) if values else math.nan
