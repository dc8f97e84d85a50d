"""The ``fastrnn train-lm`` and ``fastrnn sample`` commands.

``fastrnn/__main__.py`` owns the argument parser; it adds each command's options with
:func:`add_train_lm_arguments` / :func:`add_sample_arguments` and runs it with
:func:`run_train_lm` / :func:`run_sample`. :func:`train_lm_main` and :func:`sample_main`
do both from an argv list.

With no FILE, ``train-lm`` trains on a corpus every Python install has, with no download:
the standard library's own ``.py`` source files (the first ``--max-bytes`` of them).
"""

import argparse
import contextlib
import glob
import importlib.util
import math
import os
import signal
import sys
import sysconfig
import time

import numpy as np

from .data import TOKEN_SEPARATORS, Vocab, get_tokenizer, lm_batches
from .layers import CrossEntropyLoss, clip_grad_norm_
from .models import CELLS, RNNLanguageModel
from .optim import Adam
from .parallel import _check_num_threads, set_num_threads
from .precision import PRECISIONS
from .serialize import load_model, save_model

__all__ = ["add_train_lm_arguments", "run_train_lm", "add_sample_arguments", "run_sample",
           "train_lm_main", "sample_main", "default_corpus", "CommandError", "ArgumentParser"]


class CommandError(SystemExit):
    """An expected failure of a command (bad input, unreadable file): ``fastrnn`` prints its
    message as one line on stderr and exits with status 2. Uncaught elsewhere it behaves as
    ``SystemExit(message)``: the message is printed and the status is 1."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, with a usage error on one line: ``prog: error: message``."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def run_command(command, args, stderr=None):
    """``command(args)``, with an expected failure (:class:`CommandError`) printed as one
    line on stderr and returned as exit status 2, and Ctrl-C as status 130."""
    err = stderr or sys.stderr
    try:
        return command(args)
    except CommandError as e:
        err.write(f"{e}\n")
        return 2
    except KeyboardInterrupt:
        err.write("fastrnn: interrupted\n")
        return 130


# option types: argparse reports their ArgumentTypeError as "argument --x: <message>" ------
def _option_type(convert, check, want):
    """An argparse ``type=``: ``convert(text)``, refused unless ``check(value)``."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not check(value):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value
    parse.__name__ = want  # argparse names the type in some messages
    return parse


_positive_int = _option_type(int, lambda v: v > 0, "a positive integer")
_non_negative_int = _option_type(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _option_type(float, lambda v: 0 < v < math.inf, "a positive finite number")
_non_negative_float = _option_type(float, lambda v: 0 <= v < math.inf,
                                   "a non-negative finite number")
_open_fraction = _option_type(float, lambda v: 0 < v < 1, "a number between 0 and 1 "
                              "(exclusive)")
_probability = _option_type(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")


def _threads(text):
    """--threads: what :func:`fastrnn.set_num_threads` accepts."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    try:
        return _check_num_threads(n)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _writable_path(text):
    """A file path that can be written: its directory exists and is writable, and the
    path is not a directory (checked before training, not when the first save fails)."""
    directory = os.path.dirname(os.path.abspath(text))
    if not text or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a file path")
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"directory {directory!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"directory {directory!r} is not writable")
    return text


def default_corpus(max_bytes=1_000_000):
    """Text of the Python standard library's top-level ``.py`` files, sorted by name, up to
    about ``max_bytes`` characters: a corpus that exists wherever Python is installed."""
    stdlib = sysconfig.get_paths()["stdlib"]
    parts, size = [], 0
    for path in sorted(glob.glob(os.path.join(stdlib, "*.py"))):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue
        parts.append(text)
        size += len(text)
        if size >= max_bytes:
            break
    if not parts:
        raise RuntimeError(f"no Python source files found in {stdlib}; give a text FILE")
    return "".join(parts)[:max_bytes]


def read_text(path):
    """A UTF-8 text file's contents (a leading byte-order mark is dropped)."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise CommandError(f"fastrnn: {path} is not UTF-8 text ({e})") from e
    except OSError as e:
        raise CommandError(f"fastrnn: cannot read {path}: {e.strerror}") from e


# train-lm --------------------------------------------------------------------------------
def add_train_lm_arguments(parser):
    """Add the options of ``fastrnn train-lm`` to an argparse parser."""
    parser.add_argument("file", nargs="?", metavar="FILE",
                        help="UTF-8 text to train on (default: the Python standard library's "
                             "source files)")
    g = parser.add_argument_group("data")
    g.add_argument("--tokenizer", default="char", choices=["char", "whitespace", "jieba"],
                   help="tokens: characters, whitespace-separated words, or jieba's Chinese "
                        "words (needs `pip install jieba`) (default: char)")
    g.add_argument("--min-freq", type=_positive_int, default=1,
                   help="rarer tokens become <unk> (default: 1)")
    g.add_argument("--max-bytes", type=_positive_int, default=1_000_000,
                   help="size of the default corpus in characters (default: 1000000)")
    g.add_argument("--val-fraction", type=_open_fraction, default=0.05,
                   help="the end of the text held out for validation (default: 0.05)")
    g = parser.add_argument_group("model")
    g.add_argument("--embedding", type=_positive_int, default=64,
                   help="embedding size (default: 64)")
    g.add_argument("--hidden", type=_positive_int, default=256,
                   help="hidden size (default: 256)")
    g.add_argument("--cell", default="rnn", choices=list(CELLS),
                   help="recurrent cell: Elman RNN, LSTM or GRU (default: rnn)")
    g.add_argument("--layers", type=_positive_int, default=2,
                   help="recurrent layers (default: 2)")
    g.add_argument("--nonlinearity", default="tanh", choices=["tanh", "relu"],
                   help="the Elman RNN's activation, --cell rnn only (default: tanh)")
    g.add_argument("--dropout", type=_probability, default=0.0,
                   help="dropout between recurrent layers (default: 0)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    g.add_argument("--precision", default="float32", choices=list(PRECISIONS),
                   help="of the recurrent network's matrix products: bfloat16 rounds their "
                        "operands, the parameters and the optimizer stay float32 (float32 "
                        "--dtype only; default: float32)")
    g = parser.add_argument_group("training")
    g.add_argument("--seq-len", type=_positive_int, default=100,
                   help="steps of truncated backpropagation through time (default: 100)")
    g.add_argument("--batch", type=_positive_int, default=32,
                   help="sequences per batch (default: 32)")
    g.add_argument("--steps", type=_positive_int, default=1000,
                   help="optimizer steps (default: 1000)")
    g.add_argument("--lr", type=_positive_float, default=2e-3,
                   help="Adam learning rate (default: 2e-3)")
    g.add_argument("--clip", type=_non_negative_float, default=5.0,
                   help="clip the gradient norm to this; 0 = no clipping (default: 5)")
    g.add_argument("--seed", type=_non_negative_int, default=0,
                   help="initial weights and samples (default: 0)")
    g.add_argument("--threads", type=_threads, default=None,
                   help="fastrnn threads (default: OMP_NUM_THREADS or the CPU count)")
    g = parser.add_argument_group("reporting")
    g.add_argument("--eval-every", type=_positive_int, default=200,
                   help="validation perplexity, a sample and a checkpoint every N steps "
                        "(default: 200)")
    g.add_argument("--eval-tokens", type=_positive_int, default=200_000,
                   help="at most this many validation tokens per evaluation (default: 200000)")
    g.add_argument("--sample-length", type=_non_negative_int, default=200,
                   help="tokens in each progress sample (default: 200)")
    g.add_argument("--temperature", type=_non_negative_float, default=0.8,
                   help="sampling temperature for the progress samples (default: 0.8)")
    g.add_argument("--checkpoint", default="fastrnn-lm.npz", type=_writable_path,
                   help="model file written at every evaluation (default: fastrnn-lm.npz)")
    g.add_argument("--log-every", type=_positive_int, default=10,
                   help="progress line every N steps when not on a terminal (default: 10)")
    return parser


class _Progress:
    """One progress line: redrawn in place on a terminal, printed every ``every`` steps
    otherwise (logs, CI)."""

    def __init__(self, total, stream, every):
        self.total, self.stream, self.every = total, stream, max(1, every)
        self.tty = hasattr(stream, "isatty") and stream.isatty()
        self.last_draw = 0.0

    def update(self, step, text):
        if self.tty:
            now = time.perf_counter()
            if now - self.last_draw < 0.1 and step != self.total:
                return
            self.last_draw = now
            width = 24
            done = int(width * step / self.total)
            bar = "=" * done + (">" if done < width else "") + " " * (width - done - 1)
            self.stream.write(f"\r[{bar}] {text}\x1b[K")
            if step == self.total:
                self.stream.write("\n")
        elif step % self.every == 0 or step == self.total:
            self.stream.write(text + "\n")
        self.stream.flush()

    def clear(self):
        if self.tty:
            self.stream.write("\r\x1b[K")


@contextlib.contextmanager
def _deferred_sigint():
    """Within: a first Ctrl-C (SIGINT) only sets ``flag[0]``, for the training loop to
    stop between steps with the model whole; a second one raises KeyboardInterrupt as
    usual. Off the main thread (where handlers cannot be set) Ctrl-C raises as usual."""
    flag = [False]

    def handler(signum, frame):
        flag[0] = True
        signal.signal(signal.SIGINT, previous)

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    if previous is None:  # a handler set outside Python
        previous = signal.default_int_handler
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _check_tokenizer(name):
    if name == "jieba" and importlib.util.find_spec("jieba") is None:
        raise CommandError("fastrnn: the 'jieba' tokenizer needs the jieba package: "
                           "pip install jieba")


def _save(path, model, vocab, meta, command):
    try:
        save_model(path, model, vocab, meta)
    except OSError as e:
        raise CommandError(f"fastrnn {command}: cannot write {path}: {e.strerror or e}") from e


def _endless_batches(ids, batch, seq_len):
    """lm_batches over and over; yields (x, y, new_epoch)."""
    while True:
        first = True
        for x, y in lm_batches(ids, batch, seq_len):
            yield x, y, first
            first = False


def run_train_lm(args, stdout=None, stderr=None):
    """Train a language model as ``fastrnn train-lm`` does; returns the exit status.

    0 when all ``--steps`` ran; 130 after Ctrl-C, which stops between two steps and saves
    the model after the last complete one to ``--checkpoint`` (saying so on stderr).
    Options are validated by their argparse types; expected failures raise
    :class:`CommandError`.
    """
    out = stdout or sys.stdout
    err = stderr or sys.stderr
    _check_tokenizer(args.tokenizer)
    if args.cell != "rnn" and args.nonlinearity != "tanh":
        raise CommandError(f"fastrnn train-lm: --nonlinearity {args.nonlinearity} applies only "
                           f"to --cell rnn (the {args.cell.upper()}'s activations are fixed)")
    if args.precision == "bfloat16" and args.dtype != "float32":
        raise CommandError(f"fastrnn train-lm: --precision bfloat16 needs --dtype float32, "
                           f"got --dtype {args.dtype}")
    if args.threads is not None:
        set_num_threads(args.threads)
    if args.file:
        text, source = read_text(args.file), args.file
    else:
        text, source = default_corpus(args.max_bytes), "the Python standard library's sources"
    tokenize = get_tokenizer(args.tokenizer)
    tokens = tokenize(text)
    n_val = int(len(tokens) * args.val_fraction)
    if n_val < 2 or len(tokens) - n_val < 2 * args.batch:
        raise CommandError(f"fastrnn train-lm: {len(tokens)} tokens are too few for --batch "
                           f"{args.batch} and --val-fraction {args.val_fraction}")
    train_tokens, val_tokens = tokens[:-n_val], tokens[-n_val:]
    vocab = Vocab(train_tokens, min_freq=args.min_freq)
    train_ids, val_ids = vocab.encode(train_tokens), vocab.encode(val_tokens)[:args.eval_tokens]
    eval_batch = max(1, min(args.batch, len(val_ids) // 2))
    sep = TOKEN_SEPARATORS[args.tokenizer]
    rng = np.random.default_rng(args.seed)
    try:
        model = RNNLanguageModel(len(vocab), args.embedding, args.hidden, args.layers,
                                 args.nonlinearity, dropout=args.dropout, cell=args.cell,
                                 dtype=args.dtype, seed=rng)
        model.rnn.precision = args.precision
    except MemoryError:
        raise CommandError(f"fastrnn train-lm: not enough memory for a model of --hidden "
                           f"{args.hidden}, --embedding {args.embedding}, --layers "
                           f"{args.layers}") from None
    opt = Adam(model.parameters(), lr=args.lr)
    ce = CrossEntropyLoss()
    n_params = sum(p.data.size for p in model.parameters())
    out.write(f"fastrnn train-lm: {len(tokens):,} {args.tokenizer} tokens from {source}, "
              f"vocabulary {len(vocab):,}, {args.layers}-layer {args.cell.upper()}"
              f"{' (bfloat16 products)' if args.precision == 'bfloat16' else ''}, "
              f"{n_params:,} parameters\n")
    out.flush()
    meta = dict(tokenizer=args.tokenizer, separator=sep, source=source, steps=0,
                precision=args.precision)
    progress = _Progress(args.steps, err, args.log_every)
    batches = _endless_batches(train_ids, args.batch, args.seq_len)
    h, avg_loss, tokens_seen, train_time, done = None, None, 0, 0.0, 0
    with _deferred_sigint() as interrupted:
        try:
            for step in range(1, args.steps + 1):
                if interrupted[0]:
                    break
                t0 = time.perf_counter()
                x, y, new_epoch = next(batches)
                if new_epoch:
                    h = None  # each pass over the text starts from a zero state (h and c)
                model.zero_grad()
                logits, h = model(x, h)
                loss = ce(logits, y)
                model.backward(ce.backward())
                if args.clip > 0:
                    clip_grad_norm_(model.parameters(), args.clip)
                opt.step()
                done = step
                train_time += time.perf_counter() - t0
                tokens_seen += y.size
                avg_loss = loss if avg_loss is None else 0.95 * avg_loss + 0.05 * loss
                progress.update(step, f"step {step}/{args.steps}  loss {avg_loss:.3f}  "
                                      f"ppl {math.exp(min(avg_loss, 50)):.2f}  "
                                      f"{tokens_seen / train_time:,.0f} tok/s")
                if step % args.eval_every == 0 or step == args.steps:
                    progress.clear()
                    val_ppl = model.perplexity(val_ids, eval_batch, args.seq_len)
                    start = val_ids[rng.integers(len(val_ids))]
                    sample = model.generate(np.array([start]), args.sample_length,
                                            temperature=args.temperature, seed=rng)
                    meta.update(steps=step, val_perplexity=val_ppl, train_loss=float(avg_loss))
                    _save(args.checkpoint, model, vocab, meta, "train-lm")
                    out.write(f"step {step}: validation perplexity {val_ppl:.3f}, train loss "
                              f"{avg_loss:.3f}, {tokens_seen / train_time:,.0f} tok/s; saved "
                              f"{args.checkpoint}\n--- sample ---\n"
                              f"{vocab.decode(np.concatenate([[start], sample]), sep=sep)}\n"
                              f"--------------\n")
                    out.flush()
        except KeyboardInterrupt:
            # raised inside a step (a second Ctrl-C, or off the main thread): the weights
            # are those of the last whole step, unless it came in the middle of opt.step()
            interrupted[0] = True
        if interrupted[0]:
            progress.clear()
            if done == 0:
                err.write("fastrnn train-lm: interrupted before the first step; nothing "
                          "saved\n")
                return 130
            if meta["steps"] != done:
                meta.pop("val_perplexity", None)  # it described an earlier step
                meta.update(steps=done, train_loss=float(avg_loss), interrupted=True)
                _save(args.checkpoint, model, vocab, meta, "train-lm")
            err.write(f"fastrnn train-lm: interrupted after step {done} of {args.steps}; "
                      f"saved the model to {args.checkpoint}\n")
            err.flush()
            return 130
    return 0


# sample ----------------------------------------------------------------------------------
def add_sample_arguments(parser):
    """Add the options of ``fastrnn sample`` to an argparse parser."""
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a model file written by fastrnn train-lm")
    parser.add_argument("--length", type=_non_negative_int, default=500,
                        help="tokens to generate (default: 500)")
    parser.add_argument("--temperature", type=_non_negative_float, default=0.8,
                        help="softmax temperature; 0 = greedy (default: 0.8)")
    parser.add_argument("--top-k", type=_positive_int, default=None,
                        help="sample only from the k most likely tokens (default: all)")
    parser.add_argument("--prime", default="",
                        help="text the sample continues (default: none)")
    parser.add_argument("--seed", type=_non_negative_int, default=None,
                        help="random seed (default: a fresh one each run)")
    parser.add_argument("--threads", type=_threads, default=None, help="fastrnn threads")
    return parser


def run_sample(args, stdout=None):
    """Print a sample from a trained language model as ``fastrnn sample`` does; returns 0.

    Options are validated by their argparse types; a checkpoint that cannot be loaded or is
    not a train-lm language model raises :class:`CommandError`.
    """
    out = stdout or sys.stdout
    if args.threads is not None:
        set_num_threads(args.threads)
    try:
        model, vocab, meta = load_model(args.checkpoint)
    except (OSError, ValueError) as e:
        raise CommandError(f"fastrnn sample: cannot load {args.checkpoint}: {e}") from e
    if not isinstance(model, RNNLanguageModel) or not isinstance(vocab, Vocab):
        raise CommandError(f"fastrnn sample: {args.checkpoint} is not a language model "
                           "checkpoint (train one with fastrnn train-lm)")
    tokenizer = meta.get("tokenizer", "char")
    sep = meta.get("separator", TOKEN_SEPARATORS.get(tokenizer, ""))
    if tokenizer not in TOKEN_SEPARATORS or not isinstance(sep, str):
        raise CommandError(f"fastrnn sample: {args.checkpoint} has invalid metadata: tokenizer "
                           f"{tokenizer!r:.40} (expected one of {sorted(TOKEN_SEPARATORS)}) and "
                           f"separator {sep!r:.40} (expected a str)")
    if args.prime:
        _check_tokenizer(tokenizer)
    model.eval()
    prime_ids = vocab.encode(get_tokenizer(tokenizer)(args.prime)) if args.prime else []
    if len(prime_ids) == 0:
        # start after a line break if the vocabulary has one, else after the commonest token
        start = vocab["\n"] if "\n" in vocab else min(vocab.n_specials, len(vocab) - 1)
        prime_ids, shown = np.array([start]), ""
    else:
        shown = args.prime + (sep if sep else "")
    try:
        ids = model.generate(np.asarray(prime_ids), args.length, temperature=args.temperature,
                             top_k=args.top_k, seed=args.seed)
    except MemoryError:
        raise CommandError(f"fastrnn sample: not enough memory for --length {args.length}") \
            from None
    out.write(shown + vocab.decode(ids, sep=sep) + "\n")
    out.flush()
    return 0


# argv entry points -----------------------------------------------------------------------
def train_lm_main(argv=None):
    """``fastrnn train-lm`` from an argument list."""
    parser = ArgumentParser(prog="fastrnn train-lm",
                            description="Train a recurrent language model on text.")
    return run_command(run_train_lm, add_train_lm_arguments(parser).parse_args(argv))


def sample_main(argv=None):
    """``fastrnn sample`` from an argument list."""
    parser = ArgumentParser(prog="fastrnn sample",
                            description="Generate text with a trained language model.")
    return run_command(run_sample, add_sample_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(train_lm_main())
