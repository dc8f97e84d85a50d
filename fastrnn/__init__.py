"""fastrnn: a torch.nn.RNN-compatible recurrent network with compiled forward and BPTT.

>>> import numpy as np, fastrnn
>>> rnn = fastrnn.RNN(input_size=8, hidden_size=16, num_layers=2, seed=0)
>>> output, h_n = rnn(np.zeros((5, 3, 8), dtype=np.float32))
>>> output.shape, h_n.shape
((5, 3, 16), (2, 3, 16))
"""
from . import functional, reference
from ._memory import cache_info, empty_cache
from ._version import __version__
from .config import show_config
from .parallel import get_num_threads, set_num_threads
from .precision import get_matmul_precision, set_matmul_precision
from .module import Parameter
from .rnn import GRU, LSTM, RNN
from .stream import Stream
from .layers import CrossEntropyLoss, Embedding, Linear, clip_grad_norm_, clip_grad_value_
from . import data, models, optim
from .serialize import load_model, save_model

__all__ = ["RNN", "LSTM", "GRU", "Stream", "Parameter", "functional", "reference", "get_num_threads", "set_num_threads",
           "get_matmul_precision", "set_matmul_precision",
           "show_config", "__version__", "Embedding", "Linear", "CrossEntropyLoss", "clip_grad_norm_",
           "clip_grad_value_", "optim", "data", "models", "save_model", "load_model",
           "empty_cache", "cache_info"]
