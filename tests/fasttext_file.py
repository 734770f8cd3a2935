"""A tiny unsupervised fastText binary model written directly, for tests.

fasttext-numpy2 0.10.4's trainer is not reliable on a corpus as small as a test can afford: attempts raise
``RuntimeError("Encountered NaN.")`` or give huge vectors, and a failing setting keeps failing in one process
(CI once saw 60 failed attempts in a row). A model is only its arguments, dictionary and two matrices, so the
tests write one with seeded random matrices in fastText's own format and load it with ``fasttext.load_model``
like any downloaded model. Every vector, subword ones included, is then computed by fastText itself.

Format (fastText 0.9.2, ``FastText::saveModel``; version 12): int32 magic 793712314, int32 version;
``Args::save``: int32 dim ws epoch minCount neg wordNgrams loss model bucket minn maxn lrUpdateRate, double t;
``Dictionary::save``: int32 size nwords nlabels, int64 ntokens pruneidx_size, then per entry the word,
a NUL, int64 count, int8 type (0 word, 1 label); bool quant_input; the input matrix (int64 rows, int64
columns, float32 data: the nwords word rows then ``bucket`` n-gram rows); bool qout; the output matrix."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

MAGIC, VERSION = 793712314, 12
LOSS_NS, MODEL_SKIPGRAM = 2, 2


def write_fasttext_bin(path: Path, words: list[str], dim: int = 8, bucket: int = 1000, seed: int = 0,
                       minn: int = 3, maxn: int = 6) -> Path:
    """Write an unsupervised (skipgram) fastText model over ``words`` to ``path``.

    The input matrix, shape (len(words) + bucket, dim) float32, is drawn uniformly from [-1, 1) with
    ``numpy.random.default_rng(seed)``; the output matrix (len(words), dim) is zero, as fastText starts it.
    Words are listed with count 1 in the given order (duplicates are dropped). Returns ``path``."""
    words = list(dict.fromkeys(words))
    rng = np.random.default_rng(seed)
    matrix = rng.uniform(-1.0, 1.0, size=(len(words) + bucket, dim)).astype("<f4")
    parts = [struct.pack("<ii", MAGIC, VERSION),
             struct.pack("<12id", dim, 5, 5, 1, 5, 1, LOSS_NS, MODEL_SKIPGRAM, bucket, minn, maxn, 100, 1e-4),
             struct.pack("<iiiqq", len(words), len(words), 0, len(words), -1)]
    for word in words:
        parts.append(word.encode() + b"\0" + struct.pack("<qb", 1, 0))
    parts.append(struct.pack("<?", False) + struct.pack("<qq", *matrix.shape) + matrix.tobytes())
    output = np.zeros((len(words), dim), dtype="<f4")
    parts.append(struct.pack("<?", False) + struct.pack("<qq", *output.shape) + output.tobytes())
    path.write_bytes(b"".join(parts))
    return path
