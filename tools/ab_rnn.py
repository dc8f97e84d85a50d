"""A/B timing of fastrnn.RNN between two builds: run it once per build, alternating processes.

    git worktree add /tmp/before <rev> && (cd /tmp/before && python setup.py build_ext --inplace)
    for i in 1 2 3 4; do
        PYTHONPATH=/tmp/before python tools/ab_rnn.py > before_$i.json
        python tools/ab_rnn.py > after_$i.json
    done

Prints, as JSON, the median time in ms of the eval-mode forward and the training-mode
forward + backward of the bench sizes M1, M2, L and M2-2L-bi (2 threads, float32), each the
median of at least 0.6 s of calls, and which fastrnn was imported. Compare the medians over
the rounds: the machine is shared and single rounds spread widely.
"""
import json
import time

import numpy as np

import fastrnn

SIZES = {"M1": (50, 32, 64, 128, 1, False), "M2": (100, 64, 128, 256, 1, False),
         "L": (200, 16, 256, 512, 1, False), "M2-2L-bi": (100, 64, 128, 256, 2, True)}


def median_ms(call, seconds=0.6, at_least=5):
    call()  # warm-up: packing buffers and the block cache
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < at_least:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main():
    fastrnn.set_num_threads(2)
    result = {"fastrnn": fastrnn.__file__}
    for name, (T, N, I, H, layers, bidirectional) in SIZES.items():
        rnn = fastrnn.RNN(I, H, layers, bidirectional=bidirectional, seed=0)
        x = np.random.default_rng(0).standard_normal((T, N, I)).astype(np.float32)
        grad = np.ones((T, N, (2 if bidirectional else 1) * H), np.float32)

        def fwd_bwd():
            rnn(x)
            rnn.backward(grad)

        rnn.eval()
        result[f"{name} fwd"] = median_ms(lambda: rnn(x))
        rnn.train()
        result[f"{name} fwd+bwd"] = median_ms(fwd_bwd)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
