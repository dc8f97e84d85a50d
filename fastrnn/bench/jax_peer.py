"""JAX as a peer: fastrnn's network as a ``jax.lax.scan`` over its cell, jitted, on the CPU.

Per layer and direction the input projection x W_ihᵀ + b_ih of every step is one matrix
product before the scan (as fastrnn, torch and ONNX Runtime do), and the scan carries the
states through h W_hhᵀ + b_hh and the cell (torch's equations, the same as
``fastrnn.reference``'s). The reverse direction scans with ``reverse=True``. Forward +
backward is ``jax.vjp`` of the forward, pulled back with the output gradient, returning the
input's and every weight's gradient (as fastrnn computes both), in one jitted function.

Threads: XLA's CPU client sizes its thread pool by the CPUs the process may run on;
jax 0.10's XLA_FLAGS ``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=N``
no longer limits it (several threads stay busy in a matrix product). The bench's child
process therefore restricts its CPU affinity to the run's thread count before importing jax
(:func:`limit_cpus`), where that count is below the usable CPUs.

Needs ``pip install "fastrnn[peers]"`` (jax).
"""
import os

import numpy as np

from .._layout import layer_keys
from .workloads import DTYPE, cell_of

__all__ = ["limit_cpus", "import_jax", "jax_params", "jax_network", "jax_forward_call",
           "jax_forward_backward_call"]


def limit_cpus(threads):
    """Restrict this process to ``threads`` of its usable CPUs (Linux), so that a jax
    imported afterwards runs that many threads; a no-op where it may use no more already."""
    if hasattr(os, "sched_getaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        if threads < len(cpus):
            os.sched_setaffinity(0, cpus[:threads])


def import_jax():
    """jax on the CPU, float32 (its default)."""
    import jax

    jax.config.update("jax_platforms", "cpu")
    return jax


def jax_params(model):
    """The network's weights as a list per layer of a list per direction of
    (W_ihᵀ, W_hhᵀ, b_ih, b_hh), from fastrnn ``model``'s state dict (torch's names)."""
    params = model.state_dict()
    return [[tuple(np.ascontiguousarray(a, dtype=DTYPE) for a in (
        params[f"weight_ih_{k}"].T, params[f"weight_hh_{k}"].T, params[f"bias_ih_{k}"],
        params[f"bias_hh_{k}"])) for k in layer_keys(layer, model.bidirectional)]
        for layer in range(model.num_layers)]


def _step(cell, jnp, jax):
    """The cell's step: (carry, a_t) -> (carry, h_t), a_t = x_t W_ihᵀ + b_ih, torch's gates."""
    sigmoid = jax.nn.sigmoid

    def step(carry, a, w_hh, b_hh):
        r = carry[0] @ w_hh + b_hh
        if cell == "rnn":
            h = jnp.tanh(a + r)
            return (h,), h
        if cell == "lstm":
            i, f, g, o = jnp.split(a + r, 4, axis=-1)
            c = sigmoid(f) * carry[1] + sigmoid(i) * jnp.tanh(g)
            h = sigmoid(o) * jnp.tanh(c)
            return (h, c), h
        a_r, a_z, a_n = jnp.split(a, 3, axis=-1)
        r_r, r_z, r_n = jnp.split(r, 3, axis=-1)
        reset, update = sigmoid(a_r + r_r), sigmoid(a_z + r_z)
        n = jnp.tanh(a_n + reset * r_n)
        h = (1 - update) * n + update * carry[0]
        return (h,), h
    return step


def jax_network(cell):
    """The forward of the network of ``cell`` as a function (x, params) -> (output, h_n) or
    (output, h_n, c_n), x time-major (T, N, I), params as :func:`jax_params`."""
    jax = import_jax()
    jnp, lax = jax.numpy, jax.lax
    step = _step(cell, jnp, jax)
    n_states = 2 if cell == "lstm" else 1

    def forward(x, params):
        finals = [[] for _ in range(n_states)]
        for layer in params:
            outs = []
            for direction, (w_ih, w_hh, b_ih, b_hh) in enumerate(layer):
                a = x @ w_ih + b_ih  # every step's input part, one product
                zeros = jnp.zeros((x.shape[1], w_hh.shape[0]), x.dtype)
                carry, out = lax.scan(lambda c, a_t: step(c, a_t, w_hh, b_hh),
                                      (zeros,) * n_states, a, reverse=direction == 1)
                outs.append(out)
                for k in range(n_states):
                    finals[k].append(carry[k])
            x = jnp.concatenate(outs, axis=-1) if len(outs) > 1 else outs[0]
        return (x, *(jnp.stack(f) for f in finals))
    return forward


def jax_forward_call(model, x):
    """A zero-argument callable: the jitted forward of fastrnn ``model``'s network in JAX on
    ``x``, returning ``output, h_n`` (and ``c_n`` for the LSTM) once computed."""
    jax = import_jax()
    forward = jax.jit(jax_network(cell_of(model)))
    params, xj = jax.device_put(jax_params(model)), jax.device_put(x)
    return lambda: jax.block_until_ready(forward(xj, params))


def jax_forward_backward_call(model, x, grad_out):
    """A zero-argument callable: the jitted forward and its vjp with ``grad_out`` on the
    output (none on the final states), returning ``output, grad_x, weight gradients``."""
    jax = import_jax()
    network = jax_network(cell_of(model))

    def forward_backward(x, params, grad_out):
        out, pull = jax.vjp(lambda x, p: network(x, p)[0], x, params)
        grad_x, grad_params = pull(grad_out)
        return out, grad_x, grad_params

    call = jax.jit(forward_backward)
    args = jax.device_put((x, jax_params(model), grad_out))
    return lambda: jax.block_until_ready(call(*args))
