"""bfloat16 products against float32: the relative error of the output, of grad_x and of the
worst parameter gradient, fastrnn's (precision="bfloat16") beside torch's
(``module.to(torch.bfloat16)``), on the same weights and data.

    python tools/bf16_accuracy.py [--sizes M1,M2,L]

Prints a Markdown table row per cell and size: "fastrnn / torch" in each column, each error
‖a_bf16 − a_fp32‖ / ‖a_fp32‖ over the whole array. torch's bf16 module also keeps its states,
sums between steps and gradients in bfloat16; fastrnn rounds only the products' operands.
"""
import argparse

import numpy as np
import torch

import fastrnn

SIZES = {"M1": (50, 32, 64, 128), "M2": (100, 64, 128, 256), "L": (200, 16, 256, 512)}


def relative_error(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def fastrnn_pass(cell, sizes, x, grad, precision):
    """output, grad_x and {name: gradient} of one fastrnn forward + backward."""
    module = getattr(fastrnn, cell)(*sizes, seed=1, precision=precision)
    out, _ = module(x)
    grad_x, _ = module.backward(grad)
    return out, grad_x, {k: p.grad for k, p in module.named_parameters()}


def torch_pass(cell, sizes, state, x, grad, dtype):
    module = getattr(torch.nn, cell)(*sizes)
    module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    module = module.to(dtype)
    xt = torch.from_numpy(x).to(dtype).requires_grad_()
    out, _ = module(xt)
    out.backward(torch.from_numpy(grad).to(dtype))
    return (out.detach().float().numpy(), xt.grad.float().numpy(),
            {k: p.grad.float().numpy() for k, p in module.named_parameters()})


def errors(fp32, bf16):
    """(output, grad_x, worst parameter gradient) relative errors of bf16 against fp32."""
    return (relative_error(bf16[0], fp32[0]), relative_error(bf16[1], fp32[1]),
            max(relative_error(bf16[2][k], fp32[2][k]) for k in fp32[2]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="M1,M2,L")
    args = parser.parse_args(argv)
    print("| cell | size T×N×I×H | output | grad_x | worst parameter gradient |")
    print("|---|---|---|---|---|")
    for name in args.sizes.split(","):
        T, N, I, H = SIZES[name]
        for cell in ("RNN", "LSTM", "GRU"):
            rng = np.random.default_rng(0)
            x = rng.standard_normal((T, N, I)).astype(np.float32)
            grad = rng.standard_normal((T, N, H)).astype(np.float32)
            ours = [fastrnn_pass(cell, (I, H), x, grad, p) for p in ("float32", "bfloat16")]
            state = getattr(fastrnn, cell)(I, H, seed=1).state_dict()
            theirs = [torch_pass(cell, (I, H), state, x, grad, d)
                      for d in (torch.float32, torch.bfloat16)]
            cols = " | ".join(f"{a:.1e} / {b:.1e}"
                              for a, b in zip(errors(*ours), errors(*theirs)))
            print(f"| {cell} | {name} {T}×{N}×{I}×{H} | {cols} |", flush=True)


if __name__ == "__main__":
    main()
