"""Class word vectors for DeViSE: one unit vector per class name, from fastText word vectors.

Frome et al., "DeViSE: A Deep Visual-Semantic Embedding Model" (NeurIPS 2013) map images into the space of
a language model's word vectors and score a class by its (unit-normalised) label vector. Here a class's
label vector comes from fastText word vectors (Bojanowski et al., "Enriching Word Vectors with Subword
Information", TACL 2017): the class name with underscores read as spaces ("aquarium_fish" ->
"aquarium fish") is split on whitespace and its vector is

    v(name) = u / |u|,    u = (1 / n) sum_{w in name} x_w / |x_w|,

the mean of the unit-normalised word vectors x_w of its n words, normalised to unit length. The mean is
fastText's own "sentence vector" of an unsupervised (skipgram or cbow) model, ``get_sentence_vector`` in
its Python API and ``print-sentence-vectors`` on its command line (fastText's ``FastText::getSentenceVector``:
each word's vector divided by its norm, words whose vector is zero left out of the sum and the count, no
end-of-sentence token). A supervised fastText model defines its sentence vector differently (the plain mean
of the input vectors, end-of-sentence token included), so supervised models are refused.

Two file formats are read, told apart by their content (not their suffix):

* a fastText binary model (``.bin``, first 4 bytes the little-endian int32 793712314): loaded with
  ``fasttext.load_model`` (``pip install "hiercls[embeddings]"``); every word has a vector (subword
  n-grams give one to words outside the vocabulary), and the vector of a class is
  ``get_sentence_vector(name)`` normalised to unit length. Its layout is checked before fastText reads it
  (a truncated or damaged model would otherwise load with garbage in it, or ask for any amount of memory).
* fastText's text format (``.vec``): a first line ``N D`` (N words, D values each), then N lines
  ``word v1 ... vD``. It is read streaming, keeping only the words the classes need (real files are
  gigabytes); every row's field count and the row count are checked, the values of the first rows and of
  every row used are parsed. A word of a class missing from the file is an error naming the class and
  the word.

Errors are :class:`WordVectorError` with one-line messages naming the file (and the class or word).
"""

from __future__ import annotations

import math
import mmap
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["FASTTEXT_MAGIC", "WordVectorError", "check_word_vectors_file", "class_word_vectors"]

#: the first 4 bytes (little-endian int32) of a fastText binary model (FASTTEXT_FILEFORMAT_MAGIC_INT32)
FASTTEXT_MAGIC = 793712314
_MAX_VERSION = 12  # the newest binary format version fastText writes (and the newest it reads)
_HEADER = struct.Struct("<ii12id")  # magic, version; Args: dim ws epoch minCount neg wordNgrams loss model
#                                     bucket minn maxn lrUpdateRate, then t (double)
_DICT_HEADER = struct.Struct("<iiiqq")  # size, nwords, nlabels, ntokens, pruneidx_size (-1: not pruned)
_MATRIX_HEADER = struct.Struct("<qq")  # rows, columns; then rows * columns float32
_MODELS = {1: "cbow", 2: "skipgram", 3: "supervised"}
_FORMATS = "expected a fastText .bin model or a .vec text file (first line 'N D', then 'word v1 ... vD')"
_MAX_HEADER_LINE = 256  # bytes read looking for the .vec header line
_PARSED_ROWS = 1000  # the first rows of a .vec file whose values are all parsed (and every row used)
_CHECK_ROWS = 100  # rows of a .vec file check_word_vectors_file parses
_CHECK_BYTES = 1 << 20  # and the most bytes it reads
_MIN_NORM = 1e-6  # a mean of unit vectors shorter than this is treated as zero (its words cancel out)

_CACHE: dict[tuple[str, int, int, tuple[str, ...]], Tensor] = {}
_LOCK = threading.Lock()


class WordVectorError(ValueError):
    """A word-vector file that cannot give the class vectors: missing, not a fastText .bin model nor a .vec
    text file, damaged, or without a (nonzero) vector for a class; the one-line message names the file and
    the class or word, and says what is valid."""


def class_word_vectors(classes: Sequence[str], path: str | Path) -> Tensor:
    """The DeViSE label vectors of ``classes`` from the fastText word vectors in ``path``.

    A class's vector is the mean of the unit-normalised word vectors of its name's words (underscores read
    as spaces), normalised to unit length: fastText's sentence vector (see the module docstring). Cached
    per (resolved path, modification time, size, classes); each call returns a new copy.

    Args:
        classes: C class names, e.g. CIFAR-100's ``"aquarium_fish"``.
        path: a fastText binary model (``.bin``) or a ``.vec`` text file; the format is read from the
            content.

    Returns:
        float64 [C, D] (D the vectors' dimension), row c the unit vector of ``classes[c]``.

    Raises:
        WordVectorError: the file is missing or unreadable; it is neither a fastText binary model nor a
            valid ``.vec`` file (bad header, a row count or row length that does not match it, a value that
            is not a finite number, a damaged or supervised model); ``fasttext`` is not installed (for a
            ``.bin``); a ``.vec`` file lacks a word of a class; a class name has no words; a class's vector
            is zero (every word's vector zero, or its words' unit vectors cancel out).
    """
    file = _existing_file(path)
    names = tuple(str(c) for c in classes)
    stat = file.stat()
    key = (str(file), stat.st_mtime_ns, stat.st_size, names)
    with _LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            cached = _build(file, names)
            _CACHE[key] = cached
    return cached.clone()


def check_word_vectors_file(path: str | Path) -> None:
    """Cheap check that ``path`` looks like word vectors :func:`class_word_vectors` can read, before any
    work starts: an existing, readable file that starts like a fastText binary model (magic number, a
    format version fastText reads, a positive dimension, an unsupervised model) or like a ``.vec`` text file
    (first line two positive integers ``N D``, then rows of a word and D numbers; the first rows, up to
    1 MiB, are checked). Reads a few bytes of a ``.bin`` and at most about 1 MiB of a ``.vec``.

    Raises:
        WordVectorError: naming the file and what is wrong with it.
    """
    file = _existing_file(path)
    with _open(file) as f:
        head = f.read(_HEADER.size)
    if _is_binary(head):
        _check_binary_header(file, head)
        return
    with _open(file) as f:
        dim, _ = _vec_header(file, f)
        lineno, used = 1, 0
        for line in f:
            lineno += 1
            used += len(line)
            if lineno > _CHECK_ROWS + 1 or used > _CHECK_BYTES:
                break
            if line.strip():
                _vec_values(file, lineno, line, dim)


# ---------------------------------------------------------------------------------------------- building


def _build(file: Path, classes: tuple[str, ...]) -> Tensor:
    words = {c: _words(file, c) for c in classes}
    with _open(file) as f:
        head = f.read(_HEADER.size)
    if _is_binary(head):
        return _from_binary(file, classes)
    needed = {w for ws in words.values() for w in ws}
    dim, vectors = _read_vec(file, needed)
    missing = [(c, w) for c in classes for w in words[c] if w not in vectors]
    if missing:
        c, w = missing[0]
        others = sorted({m[1] for m in missing} - {w})
        more = (f" ({len(others)} more missing: {', '.join(map(repr, others[:5]))}"
                f"{', ...' if len(others) > 5 else ''})") if others else ""
        raise WordVectorError(
            f"word vectors {file}: class {c!r} needs the word {w!r}, which {file.name} does not have{more}")
    rows = []
    for c in classes:
        total, count = np.zeros(dim, dtype=np.float64), 0
        for w in words[c]:
            norm = float(np.linalg.norm(vectors[w]))
            if norm > 0:  # as fastText: a zero word vector is left out of the sum and the count
                total += vectors[w] / norm
                count += 1
        rows.append(_unit(file, c, total / max(count, 1)))
    return _stack(rows, dim)


def _from_binary(file: Path, classes: tuple[str, ...]) -> Tensor:
    _check_binary_layout(file)
    model = _load_fasttext(file)
    try:
        dim = int(model.get_dimension())
        rows = [_unit(file, c, np.asarray(model.get_sentence_vector(" ".join(_words(file, c))),
                                          dtype=np.float64)) for c in classes]
    finally:
        del model  # a real model holds gigabytes
    return _stack(rows, dim)


def _words(file: Path, name: str) -> list[str]:
    words = name.replace("_", " ").split()
    if not words:
        raise WordVectorError(f"word vectors {file}: class {name!r} has no words (an empty name)")
    return words


def _unit(file: Path, name: str, u: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(u))
    if not math.isfinite(norm):
        raise WordVectorError(f"word vectors {file}: class {name!r} gets a vector that is not finite")
    if norm < _MIN_NORM:
        raise WordVectorError(
            f"word vectors {file}: class {name!r} gets a zero vector (every word's vector is zero, or the "
            f"unit vectors of its words cancel out); DeViSE needs a nonzero vector per class")
    return u / norm


def _stack(rows: list[np.ndarray], dim: int) -> Tensor:
    if not rows:
        return torch.zeros((0, dim), dtype=torch.float64)
    return torch.from_numpy(np.stack(rows).astype(np.float64))


# ---------------------------------------------------------------------------------------------- files


def _existing_file(path: str | Path) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise WordVectorError(f"word vectors {file}: no such file; {_FORMATS}")
    if not file.is_file():
        raise WordVectorError(f"word vectors {file}: not a file; {_FORMATS}")
    return file.resolve()


def _open(file: Path):
    try:
        return open(file, "rb")
    except OSError as err:
        raise WordVectorError(f"word vectors {file}: cannot be read ({err.strerror or err})") from None


def _is_binary(head: bytes) -> bool:
    return len(head) >= 4 and struct.unpack_from("<i", head)[0] == FASTTEXT_MAGIC


# ---------------------------------------------------------------------------------------------- .bin


def _check_binary_header(file: Path, head: bytes) -> tuple[int, ...]:
    """The fixed-size start of a fastText model (magic, version, training arguments), checked."""
    if len(head) < _HEADER.size:
        raise WordVectorError(f"word vectors {file}: a fastText model cut short ({len(head)} bytes); "
                              f"{_FORMATS}")
    fields = _HEADER.unpack(head)
    version, dim, model = fields[1], fields[2], fields[9]
    if not 0 < version <= _MAX_VERSION:
        raise WordVectorError(f"word vectors {file}: fastText model format version {version}, fastText reads "
                              f"versions 1 to {_MAX_VERSION}; {_FORMATS}")
    if not 0 < dim <= 1_000_000:
        raise WordVectorError(f"word vectors {file}: fastText model of dimension {dim}, damaged; {_FORMATS}")
    if model not in _MODELS:
        raise WordVectorError(f"word vectors {file}: unknown fastText model type {model}, damaged; "
                              f"{_FORMATS}")
    if _MODELS[model] == "supervised":
        raise WordVectorError(
            f"word vectors {file}: a supervised fastText classifier, whose sentence vectors are not means of "
            f"word vectors; DeViSE needs an unsupervised (skipgram or cbow) model, or its .vec file")
    return fields


def _check_binary_layout(file: Path) -> None:
    """Walks a fastText model's layout (as ``FastText::saveModel`` writes it: header, dictionary, input and
    output matrices) and checks that it ends exactly at the end of the file; a quantized matrix (``.ftz``)
    is left to fastText. Cost: one pass over the dictionary's words (about a second for 2M words)."""
    size = file.stat().st_size

    def damaged(what: str) -> WordVectorError:
        return WordVectorError(f"word vectors {file}: a damaged or truncated fastText model ({what}); "
                               f"{_FORMATS}")

    with _open(file) as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        dim = _check_binary_header(file, data[:_HEADER.size])[2]
        pos = _HEADER.size
        if pos + _DICT_HEADER.size > size:
            raise damaged("it ends before its dictionary")
        n_entries, nwords, nlabels, _, n_pruned = _DICT_HEADER.unpack_from(data, pos)
        pos += _DICT_HEADER.size
        if n_entries < 0 or nwords < 0 or nlabels < 0 or nwords + nlabels != n_entries:
            raise damaged(f"dictionary of {n_entries} entries, {nwords} words and {nlabels} labels")
        for i in range(n_entries):  # entry: the word's bytes, a 0 byte, an int64 count, an int8 type
            end = data.find(b"\0", pos)
            if end < 0 or end + 10 > size:
                raise damaged(f"it ends inside dictionary entry {i + 1} of {n_entries}")
            pos = end + 10
        pos += 8 * max(n_pruned, 0)  # pruned models: (int32, int32) pairs
        for which in ("input", "output"):
            if pos + 1 > size:
                raise damaged(f"it ends before its {which} matrix")
            if data[pos]:  # a quantized matrix: its layout is fastText's to check
                return
            pos += 1
            if pos + _MATRIX_HEADER.size > size:
                raise damaged(f"it ends before its {which} matrix")
            rows, cols = _MATRIX_HEADER.unpack_from(data, pos)
            pos += _MATRIX_HEADER.size + 4 * rows * cols
            if rows < 0 or cols != dim or pos > size:
                raise damaged(f"{which} matrix of {rows} x {cols} float32 in {size} bytes, dimension {dim}")
        if pos != size:
            raise damaged(f"{size - pos} bytes after its output matrix")


def _load_fasttext(file: Path):
    try:
        import fasttext
    except ImportError:
        raise WordVectorError(
            f'word vectors {file}: reading a fastText .bin model needs the fasttext package: '
            f'pip install "hiercls[embeddings]" (or give a .vec text file)') from None
    module = getattr(fasttext, "FastText", None)
    saved = getattr(module, "eprint", None)
    if saved is not None:  # some versions print a warning on every load_model
        module.eprint = lambda *args, **kwargs: None
    try:
        return fasttext.load_model(str(file))
    except (ValueError, RuntimeError, MemoryError) as err:
        raise WordVectorError(f"word vectors {file}: fastText cannot load it ({err}); {_FORMATS}") from None
    finally:
        if saved is not None:
            module.eprint = saved


# ---------------------------------------------------------------------------------------------- .vec


def _vec_header(file: Path, f) -> tuple[int, int]:
    line = f.readline(_MAX_HEADER_LINE)
    fields = line.split()
    if not (line.endswith(b"\n") and len(fields) == 2 and all(x.isdigit() and int(x) > 0 for x in fields)):
        raise WordVectorError(f"word vectors {file}: neither a fastText model nor a .vec file (its first "
                              f"line is not two positive integers 'N D'); {_FORMATS}")
    n, dim = (int(x) for x in fields)
    return dim, n


def _vec_values(file: Path, lineno: int, line: bytes, dim: int) -> tuple[bytes, np.ndarray]:
    """A .vec row's word and its D values, checked (count, numbers, finite)."""
    fields = line.split()
    if len(fields) != dim + 1:
        raise _bad_row(file, lineno, len(fields) - 1, dim)
    word = fields[0][:40].decode("utf-8", "replace")
    try:
        values = np.array([float(x) for x in fields[1:]], dtype=np.float64)
    except ValueError:
        raise WordVectorError(f"word vectors {file}: line {lineno} (word {word!r}) has a value that is not a "
                              f"number; {_FORMATS}") from None
    if not np.isfinite(values).all():
        raise WordVectorError(f"word vectors {file}: line {lineno} (word {word!r}) has a value that is not "
                              f"finite; {_FORMATS}")
    return fields[0], values


def _bad_row(file: Path, lineno: int, got: int, dim: int) -> WordVectorError:
    return WordVectorError(f"word vectors {file}: line {lineno} has {got} values, the header says {dim} per "
                           f"word; {_FORMATS}")


def _read_vec(file: Path, needed: set[str]) -> tuple[int, dict[str, np.ndarray]]:
    """Streams a .vec file: its dimension and the vectors of the ``needed`` words it has (first rows)."""
    wanted = {w.encode("utf-8"): w for w in needed}
    found: dict[str, np.ndarray] = {}
    with _open(file) as f:
        dim, n = _vec_header(file, f)
        rows, lineno = 0, 1
        for line in f:
            lineno += 1
            body = line.strip()
            if not body:
                continue
            rows += 1
            word, *rest = body.split(None, 1)
            key = wanted.get(word)
            if rows <= _PARSED_ROWS or (key is not None and key not in found):
                _, values = _vec_values(file, lineno, body, dim)
                if key is not None and key not in found:
                    found[key] = values
            else:  # only the field count: fastText's single spaces, or any ASCII whitespace
                values = rest[0] if rest else b""
                if values.count(b" ") != dim - 1 and len(values.split()) != dim:
                    raise _bad_row(file, lineno, len(values.split()), dim)
    if rows != n:
        raise WordVectorError(f"word vectors {file}: the header says {n} words, the file has {rows} rows; "
                              f"{_FORMATS}")
    return dim, found
