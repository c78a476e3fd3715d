"""speechprune: data-free, training-free compression of speech foundation models.

Channel-wise k-means clustering (and the magnitude-pruning baseline) that physically
shrinks the feed-forward channels and attention heads of HuBERT, wav2vec2 and Whisper.
"""

__version__ = "0.2.0"
