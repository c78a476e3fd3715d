"""The paper's reported numbers: what Xu et al. (Interspeech 2026) state, and nothing measured.

The abstract gives its results as WER *reductions* of channel clustering over magnitude pruning,
absolute (WER points) and relative (percent of the magnitude WER). The absolute WERs follow from
those two numbers: magnitude = absolute / relative, and clustering = magnitude - absolute.
:data:`SETTINGS` holds every stated number once; everything else in the book is derived from it
or measured.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CITATION = (
    'H. Xu, Z. Li, H. Wang, Y. Chen, C. Deng, M. Geng, X. Liu, "Towards Data-free and Training-free '
    'Compression for Speech Foundation Models Using Parameter Clustering", Interspeech 2026, arXiv 2606.11836'
)
ARXIV_URL = "https://arxiv.org/abs/2606.11836"
TEST_SETS = ("test-clean", "test-other")
ROUNDING = 0.005  # the abstract gives two decimals


@dataclass(frozen=True)
class Reduction:
    """One stated pair: how much lower clustering's WER is than magnitude pruning's."""

    absolute: float  # WER points
    relative: float  # percent of the magnitude-pruning WER

    @property
    def magnitude_wer(self) -> float:
        return self.absolute / self.relative * 100.0

    @property
    def cluster_wer(self) -> float:
        return self.magnitude_wer - self.absolute

    def magnitude_range(self) -> tuple[float, float]:
        """The magnitude WERs consistent with both stated numbers after rounding."""
        lo = (self.absolute - ROUNDING) / (self.relative + ROUNDING) * 100.0
        hi = (self.absolute + ROUNDING) / (self.relative - ROUNDING) * 100.0
        return lo, hi


@dataclass(frozen=True)
class Setting:
    """One of the paper's experiments, as the abstract states it."""

    key: str
    title: str
    model: str
    data: tuple[str, ...]
    sparsity: float
    finetune_epochs: int
    reductions: dict[str, Reduction]
    dense: dict[str, tuple[float, str]] = field(default_factory=dict)  # test set -> (WER, source)
    claim: str | None = None

    @property
    def label(self) -> str:
        ft = f", {self.finetune_epochs} epochs fine-tuning" if self.finetune_epochs else ", no fine-tuning"
        return f"{self.title} {self.sparsity:.0%}{ft}"


_HUBERT = "facebook/hubert-large-ls960-ft"
_WHISPER = "openai/whisper-large-v3"
_LIBRISPEECH = ("librispeech:test-clean", "librispeech:test-other")
_HUBERT_DENSE = {"test-clean": (1.9, "facebook/hubert-large-ls960-ft model card")}

SETTINGS: dict[str, Setting] = {
    "hubert-large-50": Setting(
        "hubert-large-50", "HuBERT-large", _HUBERT, _LIBRISPEECH, 0.5, 0,
        {"test-clean": Reduction(27.73, 34.37), "test-other": Reduction(18.61, 21.91)},
        _HUBERT_DENSE,
    ),
    "hubert-large-50-ft3": Setting(
        "hubert-large-50-ft3", "HuBERT-large", _HUBERT, _LIBRISPEECH, 0.5, 3,
        {"test-clean": Reduction(0.19, 3.36), "test-other": Reduction(0.79, 4.62)},
        _HUBERT_DENSE,
    ),
    "whisper-large-v3-10": Setting(
        "whisper-large-v3-10", "Whisper-large-v3", _WHISPER, _LIBRISPEECH, 0.1, 0,
        {"test-clean": Reduction(2.86, 59.21), "test-other": Reduction(5.02, 55.29)},
        {"test-clean": (2.0, "Open ASR Leaderboard (about)"), "test-other": (3.9, "Open ASR Leaderboard (about)")},
        claim="no significant WER increase over the uncompressed model",
    ),
}


def paper_numbers() -> list[dict]:
    """Every number of the abstract, and the WERs it implies, one row each, labelled."""
    rows = []
    for s in SETTINGS.values():
        for test_set, r in s.reductions.items():
            base = dict(setting=s.label, model=s.model, data=f"LibriSpeech {test_set}", sparsity=s.sparsity,
                        finetune_epochs=s.finetune_epochs)
            lo, hi = r.magnitude_range()
            rows += [
                dict(base, quantity="absolute WER reduction (points)", value=r.absolute, kind="stated"),
                dict(base, quantity="relative WER reduction (%)", value=r.relative, kind="stated"),
                dict(base, quantity="magnitude pruning WER (%)", value=round(r.magnitude_wer, 2),
                     kind=f"implied, {lo:.2f} to {hi:.2f} after rounding"),
                dict(base, quantity="channel clustering WER (%)", value=round(r.cluster_wer, 2),
                     kind=f"implied, {lo - r.absolute - ROUNDING:.2f} to {hi - r.absolute + ROUNDING:.2f} after rounding"),
            ]
            if test_set in s.dense:
                value, source = s.dense[test_set]
                rows.append(dict(base, quantity="uncompressed WER (%)", value=value, kind=f"reference: {source}"))
    return rows
