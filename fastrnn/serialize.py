"""Save and load a whole model — configuration, weights, vocabulary — as one ``.npz`` file.

The file is a plain NumPy ``.npz`` archive readable with ``allow_pickle=False``:

* ``fastrnn_header``: UTF-8 JSON in a uint8 array: ``{"format": "fastrnn.model/1",
  "model": class name, "config": constructor arguments, "vocab": names of the stored
  vocabularies, "meta": anything JSON-serialisable the caller adds}``;
* ``vocab.<name>``: each vocabulary as UTF-8 JSON in a uint8 array;
* ``param.<dotted name>``: every parameter array.

Nothing in the file is executed or unpickled on load; every part is validated.
"""

import json
import math
import os
import tempfile
import zipfile
import zlib
from collections import namedtuple

import numpy as np

from ._version import __version__
from .data import Vocab
from .rnn import parameter_shapes

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


def _json_from(array, what):
    array = np.asarray(array)
    if array.dtype != np.uint8 or array.ndim != 1:
        raise ValueError(f"corrupt model file: {what} is not UTF-8 JSON bytes")
    try:
        return json.loads(array.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"corrupt model file: {what} is not valid UTF-8 JSON ({e})") from e


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
    header = {"format": FORMAT, "fastrnn_version": __version__, "model": name,
              "config": model.config(), "vocab": sorted(vocabs), "meta": meta or {}}
    try:
        arrays = {_HEADER: _json_array(header)}
    except TypeError as e:
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
    ValueError
        If the file is not a fastrnn model file or any part of it is inconsistent.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!s} is not a readable .npz model file: {e}") from e
    if not hasattr(archive, "files"):
        raise ValueError(f"{path!s} is a single .npy array, not a fastrnn model file")
    # a damaged archive fails inside zipfile/zlib/numpy's reader with their own exceptions
    try:
        with archive:
            model, vocabs, meta = _read_archive(archive, path)
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, KeyError,
            TypeError) as e:
        raise ValueError(f"corrupt model file {path!s}: {type(e).__name__}: {e}") from e
    vocab = vocabs.get("") if list(vocabs) in ([], [""]) else vocabs
    return LoadedModel(model, vocab, meta)


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


def _read_archive(archive, path):
    """(model, vocabs, meta) from an open .npz archive, validating as it goes."""
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
    if name not in MODELS:
        raise ValueError(f"unknown model class {name!r} in {path!s}; expected one of "
                         f"{sorted(MODELS)}")
    if not isinstance(config, dict):
        raise ValueError("corrupt model file: 'config' must be an object")
    try:
        # shapes first: a configuration must not make us allocate what the file lacks
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
    model = MODELS[name](**config)
    state = {k[len(_PARAM):]: archive[k] for k in archive.files if k.startswith(_PARAM)}
    model.load_state_dict(state)  # raises ValueError naming missing/unexpected/mismatched
    names = header.get("vocab", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError("corrupt model file: 'vocab' must be a list of names")
    vocabs = {}
    for n in names:
        if _VOCAB + n not in archive.files:
            raise ValueError(f"corrupt model file: vocabulary {n!r} is missing")
        vocabs[n] = Vocab.from_json(archive[_VOCAB + n].tobytes().decode("utf-8"))
    meta = header.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError("corrupt model file: 'meta' must be an object")
    return model, vocabs, meta
