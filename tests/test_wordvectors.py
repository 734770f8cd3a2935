"""DeViSE class word vectors: a tiny fastText model written here, hand-written .vec files, refusals."""

from __future__ import annotations

import random
import struct
import sys

import fasttext  # the embeddings extra, which the README's install and CI install: a failure, not a skip
import numpy as np
import pytest
import torch
from fasttext_file import write_fasttext_bin

from hiercls.wordvectors import (
    FASTTEXT_MAGIC,
    WordVectorError,
    check_word_vectors_file,
    class_word_vectors,
)

CLASSES = ["apple", "aquarium_fish", "maple_tree", "otter"]
FILLER = "the a red green water swims in grows eats river small big brown leaf tank".split()


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def ft_bin(tmp_path_factory):
    """A tiny skipgram model written directly in fastText's format (``fasttext_file``: the trainer is not
    reliable on a corpus this small). The assertions compare the module with the loaded model itself."""
    vocabulary = "apple aquarium fish maple tree otter".split() + FILLER
    return write_fasttext_bin(tmp_path_factory.mktemp("fasttext") / "tiny.bin", vocabulary)


@pytest.fixture(scope="module")
def ft_model(ft_bin):
    return fasttext.load_model(str(ft_bin))


def _write_vec(path, rows: dict[str, tuple[float, ...]], header: str | None = None) -> None:
    dim = len(next(iter(rows.values())))
    lines = [header or f"{len(rows)} {dim}"]
    lines += [f"{w} " + " ".join(repr(float(x)) for x in v) + " " for w, v in rows.items()]  # fastText: "v "
    path.write_text("\n".join(lines) + "\n")


VEC = {"maple": (3, 4, 0), "tree": (0, 0, 2), "apple": (0, 5, 0), "up": (1, 0, 0), "down": (-1, 0, 0),
       "zero": (0, 0, 0), "fish": (0, 0, -7)}


@pytest.fixture
def vec(tmp_path):
    path = tmp_path / "words.vec"
    _write_vec(path, VEC)
    return path


# ------------------------------------------------------------------------------------------ fastText .bin


def test_bin_rows_are_fasttext_sentence_vectors_normalised(ft_bin, ft_model):
    phi = class_word_vectors(CLASSES, ft_bin)
    assert phi.shape == (4, 8) and phi.dtype == torch.float64
    assert torch.allclose(phi.norm(dim=1), torch.ones(4, dtype=torch.float64), rtol=0, atol=1e-12)
    fish = phi[CLASSES.index("aquarium_fish")].numpy()
    sentence = ft_model.get_sentence_vector("aquarium fish")
    assert np.allclose(fish, _unit(sentence), rtol=0, atol=1e-12)
    # fastText's sentence vector (unsupervised model) is the plain mean of the unit word vectors, itself
    # not of unit length; no end-of-sentence token enters it
    mean = (_unit(ft_model.get_word_vector("aquarium")) + _unit(ft_model.get_word_vector("fish"))) / 2
    assert np.allclose(sentence, mean, rtol=0, atol=1e-6)
    assert np.linalg.norm(sentence) < 1 - 1e-3
    assert np.allclose(fish, _unit(mean), rtol=0, atol=1e-5)
    # a one-word class is that word's unit vector; the rows keep the order of ``classes``
    for i, name in enumerate(CLASSES):
        expected = _unit(ft_model.get_sentence_vector(name.replace("_", " ")))
        assert np.allclose(phi[i].numpy(), expected, rtol=0, atol=1e-12)
    assert np.allclose(phi[0].numpy(), _unit(ft_model.get_word_vector("apple")), rtol=0, atol=1e-6)


def test_bin_words_outside_the_vocabulary_get_subword_vectors(ft_bin, ft_model):
    # fastText builds a vector from character n-grams for a word it never saw (Bojanowski et al. 2017)
    phi = class_word_vectors(["aquariums_fishy"], ft_bin)
    expected = _unit(ft_model.get_sentence_vector("aquariums fishy"))
    assert np.allclose(phi[0].numpy(), expected, rtol=0, atol=1e-12)


def test_bin_decided_by_content_not_suffix(ft_bin, tmp_path):
    renamed = tmp_path / "model.vec"
    renamed.write_bytes(ft_bin.read_bytes())
    assert torch.equal(class_word_vectors(CLASSES, renamed), class_word_vectors(CLASSES, ft_bin))
    check_word_vectors_file(renamed)
    check_word_vectors_file(ft_bin)


def test_fasttext_load_warning_silenced(ft_bin, tmp_path, monkeypatch, capfd):
    # fasttext 0.9.x prints a warning through fasttext.FastText.eprint on every load_model
    copy = tmp_path / "quiet.bin"  # a new file: loaded, not served from the cache
    copy.write_bytes(ft_bin.read_bytes())

    def noisy(*args, **kwargs):
        print("Warning : `load_model` does not return WordVectorModel", file=sys.stderr)

    load = fasttext.load_model
    monkeypatch.setattr(fasttext.FastText, "eprint", noisy, raising=False)
    monkeypatch.setattr(fasttext, "load_model", lambda path: (fasttext.FastText.eprint("x"), load(path))[1])
    capfd.readouterr()
    class_word_vectors(CLASSES, copy)
    assert capfd.readouterr().err == ""
    assert fasttext.FastText.eprint is noisy  # put back afterwards


def test_damaged_bin_refused_before_fasttext_reads_it(ft_bin, tmp_path):
    data = ft_bin.read_bytes()
    for n in (10, 100, 1000, len(data) // 2, len(data) - 1):
        cut = tmp_path / f"cut{n}.bin"
        cut.write_bytes(data[:n])
        with pytest.raises(WordVectorError, match=rf"{cut.name}.*(truncated|cut short).*\.bin model or a"):
            class_word_vectors(CLASSES, cut)
    longer = tmp_path / "longer.bin"
    longer.write_bytes(data + b"\0\0")
    with pytest.raises(WordVectorError, match=r"longer\.bin.*2 bytes after its output matrix"):
        class_word_vectors(CLASSES, longer)
    with pytest.raises(WordVectorError, match=r"cut10\.bin.*cut short"):
        check_word_vectors_file(tmp_path / "cut10.bin")


def test_supervised_and_future_models_refused(ft_bin, tmp_path):
    data = bytearray(ft_bin.read_bytes())
    assert struct.unpack_from("<i", data)[0] == FASTTEXT_MAGIC
    supervised = tmp_path / "classifier.bin"
    struct.pack_into("<i", data, 4 * 9, 3)  # Args.model (magic, version, dim .. loss, model): supervised
    supervised.write_bytes(data)
    for call in (lambda p: class_word_vectors(CLASSES, p), check_word_vectors_file):
        with pytest.raises(WordVectorError, match=r"classifier\.bin: a supervised fastText classifier"):
            call(supervised)
    future = tmp_path / "future.bin"
    data = bytearray(ft_bin.read_bytes())
    struct.pack_into("<i", data, 4, 13)
    future.write_bytes(data)
    with pytest.raises(WordVectorError, match=r"future\.bin: fastText model format version 13"):
        check_word_vectors_file(future)


def test_fasttext_not_installed(ft_bin, tmp_path, monkeypatch):
    copy = tmp_path / "copy.bin"  # a new file: not served from the cache
    copy.write_bytes(ft_bin.read_bytes())
    monkeypatch.setitem(sys.modules, "fasttext", None)
    with pytest.raises(WordVectorError, match=r'copy\.bin.*pip install "hiercls\[embeddings\]"'):
        class_word_vectors(CLASSES, copy)
    check_word_vectors_file(copy)  # the cheap check does not need fasttext


# ------------------------------------------------------------------------------------------ .vec text


def test_vec_by_hand(vec):
    phi = class_word_vectors(["maple_tree", "apple", "up"], vec)
    assert phi.shape == (3, 3) and phi.dtype == torch.float64
    # maple (3,4,0) -> (0.6,0.8,0); tree (0,0,2) -> (0,0,1); mean (0.3,0.4,0.5), norm sqrt(0.5)
    r = 0.5**0.5
    expected = torch.tensor([[0.3 / r, 0.4 / r, 0.5 / r], [0, 1, 0], [1, 0, 0]], dtype=torch.float64)
    assert torch.allclose(phi, expected, rtol=0, atol=1e-15)
    assert class_word_vectors([], vec).shape == (0, 3)
    check_word_vectors_file(vec)


def test_vec_mean_of_unit_vectors_not_of_raw_vectors(tmp_path):
    path = tmp_path / "scale.vec"
    _write_vec(path, {"big": (100, 0), "small": (0, 1)})
    # raw mean (50, 0.5) would point almost along "big"; the unit vectors count equally: (1, 1) / sqrt(2)
    phi = class_word_vectors(["big_small"], path)
    assert torch.allclose(phi, torch.tensor([[0.5**0.5, 0.5**0.5]], dtype=torch.float64), rtol=0, atol=1e-15)


def test_vec_decided_by_content_tabs_and_first_row_of_a_repeated_word(tmp_path):
    path = tmp_path / "words.bin"  # a .vec text file whatever its name
    path.write_text("3 2\nmaple\t1 0\nmaple 0 1\ntree  0   2  \n")
    phi = class_word_vectors(["maple", "tree"], path)
    assert torch.equal(phi, torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64))


def test_vec_missing_word_names_class_and_word(vec):
    with pytest.raises(WordVectorError) as info:
        class_word_vectors(["apple", "aquarium_fish", "otter"], vec)
    message = str(info.value)
    assert "class 'aquarium_fish' needs the word 'aquarium', which words.vec does not have" in message
    assert str(vec) in message and "'otter'" in message and "\n" not in message


def test_zero_vectors_refused_naming_the_class(vec):
    with pytest.raises(WordVectorError, match=r"words\.vec: class 'zero' gets a zero vector"):
        class_word_vectors(["apple", "zero"], vec)
    with pytest.raises(WordVectorError, match=r"class 'up_down' gets a zero vector.*cancel"):
        class_word_vectors(["up_down"], vec)
    with pytest.raises(WordVectorError, match=r"class 'tree_fish' gets a zero vector"):
        class_word_vectors(["tree_fish"], vec)
    # a zero word next to a nonzero one is left out, as fastText does: "zero apple" is apple's vector
    phi = class_word_vectors(["zero_apple"], vec)
    assert torch.equal(phi, torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64))
    with pytest.raises(WordVectorError, match=r"class '__' has no words"):
        class_word_vectors(["__"], vec)


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("random.vec", None, r"first line is not two positive integers"),
        ("config.yaml", "model: resnet18\nloss: devise\n", r"first line is not two positive integers"),
        ("header.vec", "2 3 4\na 1 2 3\nb 1 2 3\n", r"first line is not two positive integers"),
        ("negative.vec", "2 -3\na 1 2 3\nb 1 2 3\n", r"first line is not two positive integers"),
        ("wrongdim.vec", "2 3\napple 1 2\nmaple 1 2\n", r"line 2 has 2 values, the header says 3 per word"),
        ("longrow.vec", "2 2\napple 1 2 3\nmaple 1 2\n", r"line 2 has 3 values, the header says 2 per word"),
        ("notnumber.vec", "2 2\napple 1 x\nmaple 1 2\n", r"\(word 'apple'\) has a value that is not a n"),
        ("nan.vec", "2 2\napple 1 nan\nmaple 1 2\n", r"\(word 'apple'\) has a value that is not finite"),
        ("count.vec", "3 2\napple 1 0\nmaple 1 2\n", r"the header says 3 words, the file has 2 rows"),
        ("noheader.vec", "apple 1 0\nmaple 1 2\n", r"first line is not two positive integers"),
        ("empty.vec", "", r"first line is not two positive integers"),
    ],
)
def test_not_word_vector_files_refused_naming_the_file(tmp_path, name, content, match):
    path = tmp_path / name
    if content is None:
        path.write_bytes(random.Random(1).randbytes(4096))
    else:
        path.write_text(content)
    with pytest.raises(WordVectorError, match=match) as info:
        class_word_vectors(["apple"], path)
    message = str(info.value)
    assert str(path) in message and "expected a fastText .bin model or a .vec text file" in message
    assert "\n" not in message
    if name != "count.vec":  # the cheap check does not count rows
        with pytest.raises(WordVectorError, match=match):
            check_word_vectors_file(path)


def test_bad_row_far_from_the_start_found(tmp_path):
    path = tmp_path / "long.vec"
    rows = [f"w{i} 1 2" for i in range(1500)]
    rows[1200] = "w1200 1 2 3"  # past the rows whose values are all parsed: still counted
    path.write_text("1500 2\n" + "\n".join(rows) + "\n")
    with pytest.raises(WordVectorError, match=r"long\.vec: line 1202 has 3 values, the header says 2"):
        class_word_vectors(["w0"], path)
    check_word_vectors_file(path)  # the cheap check reads the first rows only


def test_missing_file_and_folder(tmp_path):
    missing = tmp_path / "nowhere.bin"
    for call in (lambda p: class_word_vectors(["apple"], p), check_word_vectors_file):
        with pytest.raises(WordVectorError, match=r"nowhere\.bin: no such file"):
            call(missing)
        with pytest.raises(WordVectorError, match=rf"{tmp_path.name}: not a file"):
            call(tmp_path)


# ------------------------------------------------------------------------------------------ cache


def test_cache_returns_equal_copies_and_sees_a_changed_file(vec):
    first = class_word_vectors(["maple_tree", "apple"], vec)
    second = class_word_vectors(["maple_tree", "apple"], vec)
    assert torch.equal(first, second) and first.data_ptr() != second.data_ptr()
    first.zero_()
    assert torch.equal(class_word_vectors(["maple_tree", "apple"], vec), second)
    assert torch.equal(class_word_vectors(["apple", "maple_tree"], vec), second.flip(0))
    _write_vec(vec, {**VEC, "apple": (0, 0, 1.5), "pad": (1, 1, 1)})  # another size: not the cached entry
    assert torch.equal(class_word_vectors(["apple"], vec), torch.tensor([[0.0, 0.0, 1.0]]).double())
