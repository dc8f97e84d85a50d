"""Types of the compiled helpers in ``_ops.pyx`` (float32 or float64 arrays, one dtype per call)."""

import numpy as np
import numpy.typing as npt

_F = npt.NDArray[np.floating]
_I64 = npt.NDArray[np.int64]

def embedding_backward(indices: _I64, grad: _F, weight_grad: _F, padding_idx: int = -1,
                       num_threads: int = 1) -> None: ...
def cross_entropy_forward(logits: _F, targets: _I64, ignore_index: int, losses: _F, probs: _F,
                          num_threads: int = 1) -> None: ...
def cross_entropy_backward(probs: _F, targets: _I64, ignore_index: int, row_scale: _F,
                           grad: _F, num_threads: int = 1) -> None: ...
def adam_step(param: _F, grad: _F, exp_avg: _F, exp_avg_sq: _F, step_size: float,
              beta1: float, beta2: float, bias_correction2_sqrt: float, eps: float,
              weight_decay: float) -> None: ...
def seed_generators(seeds: npt.NDArray[np.uint64], states: npt.NDArray[np.uint64]) -> None: ...
def choose_tokens(logits: _F, temperature: float, top_k: int, states: npt.NDArray[np.uint64],
                  out: _I64, num_threads: int = 1) -> None: ...
