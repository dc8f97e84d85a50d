"""Optimizers over :class:`fastrnn.Parameter` lists, with torch.optim's update formulas.

Each ``step()`` reads ``p.grad`` and updates ``p.data`` in place, in the parameter's dtype,
with the same operations in the same order as torch's single-tensor (for-loop) CPU
implementation, so a fastrnn model and a torch model fed the same gradients follow the
same trajectory to float rounding.

>>> opt = fastrnn.optim.Adam(model.parameters(), lr=2e-3)
>>> model.zero_grad(); ...; model.backward(...); opt.step()
"""

import math

import numpy as np

from . import _ops
from ._validate import _check_real, _checked_grad
from .module import Parameter

__all__ = ["Optimizer", "SGD", "Adam"]


class Optimizer:
    """Base class: holds the parameter list and per-parameter state."""

    def __init__(self, params, lr):
        if isinstance(params, Parameter):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Parameters, got a single Parameter")
        self.params = list(params)
        if not self.params:
            raise ValueError("optimizer got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, Parameter):
                raise TypeError(f"optimizer can only optimize Parameters, but params[{i}] is "
                                f"{type(p).__name__}")
        if len({id(p) for p in self.params}) != len(self.params):
            # each entry has its own state: a repeated parameter would be stepped twice
            raise ValueError("optimizer got a parameter more than once")
        self.lr = _hyperparameter(lr, "learning rate")
        self.state = [dict() for _ in self.params]

    def _grads(self):
        """(index, parameter, gradient, state), each gradient checked to match its parameter.

        All are checked before any parameter changes, so a bad gradient leaves the model as
        it was (NumPy would broadcast a gradient of another shape into the update).
        """
        grads = [_checked_grad(p, f"params[{i}]") for i, p in enumerate(self.params)]
        try:
            yield from zip(self.params, grads, self.state)
        finally:  # the step may have changed any of them (streams repack what changed)
            for p in self.params:
                p.mark_changed()

    def zero_grad(self):
        """Set the gradient of every parameter to zero."""
        for i, p in enumerate(self.params):
            _checked_grad(p, f"params[{i}]")[...] = 0

    def step(self):
        """Update every parameter from its gradient."""
        raise NotImplementedError


def _hyperparameter(value, name, low=0.0):
    """A real hyperparameter ``>= low`` (not NaN; inf allowed, as torch), else torch's
    ``Invalid <name>: <value>``."""
    try:
        return _check_real(value, name, low=low, allow_inf=True)
    except ValueError:
        raise ValueError(f"Invalid {name}: {value}") from None


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum (torch.optim.SGD).

    ``d = g + wd·p``; with momentum ``buf = d`` at the first step, then
    ``buf = μ·buf + (1 - dampening)·d`` and ``d = buf`` (or ``d + μ·buf`` if Nesterov);
    ``p -= lr·d``.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float
    momentum, weight_decay, dampening : float, default 0
    nesterov : bool, default False
    """

    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, dampening=0.0,
                 nesterov=False):
        super().__init__(params, lr)
        self.momentum = _hyperparameter(momentum, "momentum")
        self.weight_decay = _hyperparameter(weight_decay, "weight_decay")
        self.dampening = _hyperparameter(dampening, "dampening", low=None)
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"nesterov must be a bool, got {type(nesterov).__name__}")
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        self.nesterov = bool(nesterov)

    def step(self):
        for p, d, state in self._grads():
            if self.weight_decay != 0:
                d = d + self.weight_decay * p.data  # d = g + wd·p
            if self.momentum != 0:
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = d.copy()
                else:
                    buf *= self.momentum  # buf = μ·buf + (1 - dampening)·d
                    buf += (1 - self.dampening) * d
                d = d + self.momentum * buf if self.nesterov else buf
            p.data += -self.lr * d  # p -= lr·d


class Adam(Optimizer):
    """Adam (torch.optim.Adam with amsgrad=False, maximize=False).

    With ``g = grad + wd·p`` and step count t:
    ``m = m + (1-β1)(g - m)``, ``v = β2·v + (1-β2)·g²``,
    ``p -= (lr / (1 - β1ᵗ)) · m / (√v / √(1 - β2ᵗ) + eps)``.

    Parameters
    ----------
    params : iterable of Parameter
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0 (L2 penalty added to the gradient, as torch's Adam)
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr)
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise TypeError(f"betas must be a pair of floats, got {betas!r}")
        beta1, beta2 = (_hyperparameter(b, f"beta parameter at index {i}")
                        for i, b in enumerate(betas))
        for i, b in enumerate((beta1, beta2)):
            if not b < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {b}")
        self.betas = (beta1, beta2)
        self.eps = _hyperparameter(eps, "epsilon value")
        self.weight_decay = _hyperparameter(weight_decay, "weight_decay")

    def step(self):
        beta1, beta2 = self.betas
        for p, grad, state in self._grads():
            if not state:
                state["step"] = 0
                state["exp_avg"] = np.zeros_like(p.data)
                state["exp_avg_sq"] = np.zeros_like(p.data)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            step_size = self.lr / (1 - beta1 ** t)
            bias_correction2_sqrt = math.sqrt(1 - beta2 ** t)
            arrays = (p.data, grad, m, v)
            if (all(a.flags.c_contiguous and a.dtype == p.data.dtype for a in arrays)
                    and p.data.dtype in (np.float32, np.float64) and p.data.flags.writeable):
                _ops.adam_step(*(a.reshape(-1) for a in arrays), step_size, beta1, beta2,
                               bias_correction2_sqrt, self.eps, self.weight_decay)
                continue
            g = grad
            if self.weight_decay != 0:
                g = g + self.weight_decay * p.data
            m += (1 - beta1) * (g - m)  # m = lerp(m, g, 1 - β1)
            v *= beta2  # v = β2·v + (1 - β2)·g·g
            v += (1 - beta2) * g * g
            denom = np.sqrt(v) / bias_correction2_sqrt + self.eps
            p.data += (-step_size * m) / denom  # p -= step_size · m / denom
