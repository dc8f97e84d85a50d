"""fastrnn: a torch.nn.RNN-compatible recurrent network with compiled forward and BPTT.

>>> import numpy as np, fastrnn
>>> rnn = fastrnn.RNN(input_size=8, hidden_size=16, num_layers=2, seed=0)
>>> output, h_n = rnn(np.zeros((5, 3, 8), dtype=np.float32))
>>> output.shape, h_n.shape
((5, 3, 16), (2, 3, 16))
"""
from . import functional, reference
from ._version import __version__
from .parallel import get_num_threads, set_num_threads
from .rnn import RNN, Parameter

__all__ = ["RNN", "Parameter", "functional", "reference", "get_num_threads", "set_num_threads",
           "__version__"]
