"""speechprune: data-free, training-free compression of speech foundation models.

Channel-wise k-means clustering (and the magnitude-pruning baseline) that physically
shrinks the feed-forward channels and attention heads of HuBERT, wav2vec2, Whisper, WavLM,
data2vec-audio, Wav2Vec2-Conformer, UniSpeech-SAT and SEW.

The public API is what ``__all__`` lists; everything else may change between versions.
"""

from speechprune._version import __version__  # noqa: F401  (written once, in speechprune/_version.py)

# compress, evaluate, export and kmeans share their names with the modules that define them: these
# imports bind the package attributes to the functions. Reach a module's other names with
# ``from speechprune.compress import ...`` (or ``sys.modules["speechprune.evaluate"]``).
from speechprune.allocation import allocate
from speechprune.checkpoint import load_checkpoint, save_pruned
from speechprune.compress import CompressionReport, compress
from speechprune.errors import SpeechPruneError
from speechprune.evaluate import evaluate
from speechprune.export import export
from speechprune.kmeans import kmeans, kmeans_many
from speechprune.methods import available_methods, register_method
from speechprune.models import load_model
from speechprune.options import CompressionOptions

__all__ = [
    "compress",
    "CompressionOptions",
    "CompressionReport",
    "register_method",
    "available_methods",
    "load_model",
    "load_checkpoint",
    "save_pruned",
    "evaluate",
    "export",
    "kmeans",
    "kmeans_many",
    "allocate",
    "SpeechPruneError",
]
