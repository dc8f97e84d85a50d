"""Save and load a whole model — configuration, weights, vocabulary — as one ``.npz`` file.

The file is a plain NumPy ``.npz`` archive readable with ``allow_pickle=False``:

* ``fastrnn_header``: UTF-8 JSON in a uint8 array: ``{"format": "fastrnn.model/1",
  "model": class name, "config": constructor arguments, "vocab": names of the stored
  vocabularies, "meta": anything JSON-serialisable the caller adds}``; the configuration
  names the recurrent ``cell`` ("rnn", "lstm" or "gru"), and a file written before cells
  existed (no ``cell`` entry) loads as "rnn";
* ``vocab.<name>``: each vocabulary as UTF-8 JSON in a uint8 array;
* ``param.<dotted name>``: every parameter array.

Nothing in the file is executed or unpickled on load; every part is validated.
"""

import json
import math
import os
import struct
import tempfile
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from ._version import __version__
from .data import Vocab
from .module import parameter_shapes

__all__ = ["save_model", "load_model", "LoadedModel"]

FORMAT = "fastrnn.model/1"
_HEADER = "fastrnn_header"
_PARAM, _VOCAB = "param.", "vocab."

# deflate emits at least 1 bit per 258-byte match: no entry inflates by more than this
_DEFLATE_MAX_RATIO = 1032

LoadedModel = namedtuple("LoadedModel", ["model", "vocab", "meta"])
LoadedModel.__doc__ = "What :func:`load_model` returns: ``model, vocab, meta = load_model(path)``."


def _json_array(obj):
    return np.frombuffer(json.dumps(obj, ensure_ascii=False).encode("utf-8"), dtype=np.uint8)


def _text_from(array, what):
    """The UTF-8 text a uint8 entry holds."""
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"corrupt model file: {what} is not UTF-8 text bytes, got "
                         f"{array.dtype} of shape {array.shape}")
    try:
        return array.tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"corrupt model file: {what} is not UTF-8 text ({e})") from e


def _json_from(array, what):
    try:
        return json.loads(_text_from(array, what))
    except (json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"corrupt model file: {what} is not valid UTF-8 JSON ({e})") from e


def _vocab_size_key(name):
    """The configuration entry a vocabulary's size must equal: ``vocab_size`` for the
    unnamed one, ``src_vocab_size`` for ``"src"``, ..."""
    return f"{name}_vocab_size" if name else "vocab_size"


def _check_vocab_sizes(config, vocabs):
    """Every vocabulary has as many tokens as the embedding it indexes has rows (ids the
    model emits must decode, ids the vocabulary encodes must be rows)."""
    for name, vocab in vocabs.items():
        size = config.get(_vocab_size_key(name))
        if size is not None and size != len(vocab):
            raise ValueError(f"vocabulary {name or 'vocab'!r} has {len(vocab)} tokens but the "
                             f"model's {_vocab_size_key(name)} is {size}")


def save_model(path, model, vocab=None, meta=None):
    """Write ``model`` (a :mod:`fastrnn.models` class), its vocabulary and metadata to ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        Written as given (no suffix added), atomically: a crash leaves the old file.
    model : a model from :data:`fastrnn.models.MODELS`
    vocab : Vocab, dict of str to Vocab, or None
        E.g. ``{"src": src_vocab, "tgt": tgt_vocab}`` for a :class:`~fastrnn.models.Seq2Seq`.
    meta : dict, optional
        JSON-serialisable extras (tokenizer name, training step, validation perplexity, ...).
    """
    from .models import MODELS

    name = type(model).__name__
    if MODELS.get(name) is not type(model):
        raise TypeError(f"save_model saves the models of fastrnn.models ({sorted(MODELS)}), "
                        f"got {name}")
    if vocab is None:
        vocabs = {}
    elif isinstance(vocab, Vocab):
        vocabs = {"": vocab}
    elif isinstance(vocab, dict) and all(isinstance(k, str) and k and isinstance(v, Vocab)
                                         for k, v in vocab.items()):
        vocabs = dict(vocab)
    else:
        raise TypeError("vocab must be a Vocab, a dict of non-empty names to Vocabs, or None")
    config = model.config()
    _check_vocab_sizes(config, vocabs)  # load_model would refuse the file
    if meta is None:
        meta = {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise TypeError(f"meta must be a dict with str keys (a JSON object) or None, got "
                        f"{type(meta).__name__}")
    header = {"format": FORMAT, "fastrnn_version": __version__, "model": name,
              "config": config, "vocab": sorted(vocabs), "meta": meta}
    try:
        arrays = {_HEADER: _json_array(header)}
    except (TypeError, ValueError, RecursionError) as e:  # ValueError: circular reference
        raise TypeError(f"meta must be JSON-serialisable: {e}") from e
    for key, v in vocabs.items():
        arrays[_VOCAB + key] = np.frombuffer(v.to_json().encode("utf-8"), dtype=np.uint8)
    for pname, p in model.named_parameters():
        arrays[_PARAM + pname] = p.data
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastrnn-", suffix=".npz.tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        umask = os.umask(0)  # mkstemp's file is private (0600): give it the usual mode
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_model(path):
    """Read a model written by :func:`save_model`.

    Returns
    -------
    LoadedModel
        ``(model, vocab, meta)``: the model in training mode with the saved weights; the
        Vocab (or dict of Vocabs, or None) as saved; the metadata dict.

    Raises
    ------
    OSError
        If the file cannot be opened or read (missing, a directory, no permission).
    ValueError
        If the file is not a fastrnn model file or any part of it is inconsistent. Nothing
        of a size the file states is allocated before that size is checked against what the
        file holds.
    """
    with open(path, "rb") as f:
        magic = f.read(6)
        # np.load would read (and allocate for) a bare .npy array: refuse it unread
        if magic.startswith(b"\x93NUMPY"):
            raise ValueError(f"{path!s} is a single .npy array, not a fastrnn model file")
        if magic[:4] != _ZIP_MAGIC:
            raise ValueError(f"{path!s} is not a fastrnn model file (not an .npz archive)")
        f.seek(0)
        # a damaged archive fails inside zipfile/zlib/numpy's reader with their own exceptions
        try:
            with np.load(f, allow_pickle=False) as archive:
                model, vocabs, meta = _read_archive(archive, path)
        except _ARCHIVE_ERRORS as e:
            raise ValueError(f"corrupt model file {path!s}: {type(e).__name__}: {e}") from e
    vocab = vocabs.get("") if list(vocabs) in ([], [""]) else vocabs
    return LoadedModel(model, vocab, meta)


_ZIP_MAGIC = b"PK\x03\x04"  # a local file header: every non-empty zip starts with one
# what zipfile, zlib and numpy's .npy reader raise on damaged bytes (NotImplementedError:
# zipfile's "zip file version 16.7" and the like)
_ARCHIVE_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, struct.error, KeyError,
                   TypeError, OverflowError, NotImplementedError)


def _entry_shapes(archive):
    """{entry: shape} from every ``.npy`` header, before any array is read.

    numpy allocates what an entry's header claims before reading its data, so a header
    claiming more elements than the entry's bytes can hold is refused here (ValueError)
    rather than met with a huge allocation. The entry's size is bounded by its compressed
    size, which the archive's real size bounds.
    """
    shapes = {}
    for name in archive.files:
        info = archive.zip.getinfo(name + ".npy")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            # np.savez writes no other; bzip2 and lzma have no useful bound on their ratio
            raise ValueError(f"corrupt model file: entry {name!r} has compression method "
                             f"{info.compress_type}; expected stored or deflated")
        if info.flag_bits & 0x1:
            raise ValueError(f"corrupt model file: entry {name!r} is encrypted")
        most = info.compress_size * (1 if info.compress_type == zipfile.ZIP_STORED
                                     else _DEFLATE_MAX_RATIO)
        with archive.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"corrupt model file: entry {name!r} has .npy format "
                                 f"version {version}; expected 1.0 or 2.0")
            claimed = f.tell() + math.prod(shape) * dtype.itemsize
        if claimed != info.file_size or info.file_size > most:
            raise ValueError(f"corrupt model file: entry {name!r} claims shape {shape} of "
                             f"{dtype} ({claimed} bytes with its header) but holds "
                             f"{min(info.file_size, most)} bytes")
        shapes[name] = shape
    return shapes


def _check_config_bounds(config, stored, path):
    """Refuse a configuration number larger than the file could hold, before building.

    Building even the shapes of a model costs time in proportion to its layers, so the
    stored parameter entries bound ``num_layers`` (each layer has at least two), and the
    stored elements bound every other integer (a size, a class count, an index); the
    entries were checked against the archive's real size by :func:`_entry_shapes`.
    """
    params = [shape for key, shape in stored.items() if key.startswith(_PARAM)]
    n_entries, n_elements = len(params), sum(math.prod(shape) for shape in params)
    for key, value in config.items():
        if type(value) is int:
            most = n_entries if key == "num_layers" else n_elements
            if abs(value) > most:
                raise ValueError(f"{path!s} does not match its configuration: {key}={value} "
                                 f"but the file holds {n_entries} parameters of {n_elements} "
                                 f"elements")


def _read_archive(archive, path):
    """(model, vocabs, meta) from an open .npz archive, validating as it goes.

    Everything cheap is checked before the model is built: header, configuration against
    the stored shapes, vocabularies against the configuration, metadata.
    """
    from .models import MODELS

    if _HEADER not in archive.files:
        raise ValueError(f"{path!s} is not a fastrnn model file (no {_HEADER!r} entry)")
    stored = _entry_shapes(archive)
    header = _json_from(archive[_HEADER], "the header")
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        fmt = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"unsupported model file format {fmt!r}; this fastrnn reads "
                         f"{FORMAT!r}")
    name, config = header.get("model"), header.get("config")
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model class {name!r} in {path!s}; expected one of "
                         f"{sorted(MODELS)}")
    if not isinstance(config, dict):
        raise ValueError("corrupt model file: 'config' must be an object")
    _check_config_bounds(config, stored, path)
    try:
        # shapes first: a configuration must not make us allocate what the file lacks; the
        # constructor refuses what it does not know (an unknown cell among them)
        expected = parameter_shapes(lambda: MODELS[name](**config))
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid configuration for {name} in {path!s}: {e}") from e
    found = {k[len(_PARAM):]: stored[k] for k in stored if k.startswith(_PARAM)}
    if found != expected:
        wrong = sorted(set(expected) ^ set(found)) or sorted(
            n for n in expected if expected[n] != found[n])
        n = wrong[0]
        raise ValueError(f"{path!s} does not match its configuration {config}: parameter "
                         f"{n!r} should be {expected.get(n, 'absent')}, the file has "
                         f"{found.get(n, 'none')} ({len(wrong)} parameter(s) differ)")
    names = header.get("vocab", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("corrupt model file: 'vocab' must be a list of names")
    in_file = {k[len(_VOCAB):] for k in archive.files if k.startswith(_VOCAB)}
    if sorted(set(names)) != sorted(names) or set(names) != in_file:
        raise ValueError(f"corrupt model file: the header lists vocabularies {names}, the "
                         f"file holds {sorted(in_file)}")
    vocabs = {n: Vocab.from_json(_text_from(archive[_VOCAB + n], f"vocabulary {n!r}"))
              for n in names}
    _check_vocab_sizes(config, vocabs)
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"corrupt model file: 'meta' must be an object, got "
                         f"{type(meta).__name__}")
    model = MODELS[name](**config)
    state = {k[len(_PARAM):]: archive[k] for k in archive.files if k.startswith(_PARAM)}
    model.load_state_dict(state)  # raises ValueError naming missing/unexpected/mismatched
    return model, vocabs, meta
