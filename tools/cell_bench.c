/* The gated cells' pointwise kernels alone (src_c/cell_steps.h: the LSTM's and the GRU's
 * forward epilogue), on one thread, for every kernel build this CPU runs: time per call and
 * per vector of 16 units, best of 7 rounds. The data stay in cache, as a step's rows do.
 *
 *     gcc -O3 -ffp-contract=fast -Isrc_c tools/cell_bench.c src_c/dispatch.c src_c/scratch.c \
 *         src_c/kernels_*.c -lm -o /tmp/cell_bench && /tmp/cell_bench 16 128
 *
 * Arguments: rows M and hidden units H (one thread's part of a step: M = N / threads).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels.h"

const fastrnn_kernels *const *fastrnn_kernels_available(void);

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float uniform(float scale) { return (rand() / (float)RAND_MAX - 0.5f) * scale; }

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s M H\n", argv[0]);
        return 2;
    }
    const int M = atoi(argv[1]), H = atoi(argv[2]);
    if (M < 1 || M > 4096 || H < 1 || H > 65536) {
        fprintf(stderr, "M must be 1..4096 and H 1..65536, got %d and %d\n", M, H);
        return 2;
    }
    /* rows as the recurrence passes them: saved gates (+ c), products, previous state, h */
    float *save = malloc(sizeof(float) * M * 5 * H), *r = malloc(sizeof(float) * M * 4 * H);
    float *prev = malloc(sizeof(float) * M * H), *h = malloc(sizeof(float) * M * H);
    float **rows = malloc(sizeof(float *) * 4 * M);
    if (!save || !r || !prev || !h || !rows) return 1;
    float **srow = rows, **rrow = rows + M, **prow = rows + 2 * M, **hrow = rows + 3 * M;
    for (int i = 0; i < M; i++) {
        srow[i] = save + (long)i * 5 * H;
        rrow[i] = r + (long)i * 4 * H;
        prow[i] = prev + (long)i * H;
        hrow[i] = h + (long)i * H;
    }
    srand(1);
    for (long i = 0; i < (long)M * 4 * H; i++) r[i] = uniform(4);
    for (long i = 0; i < (long)M * H; i++) prev[i] = uniform(2);
    const double vectors = M * (double)H / 16;
    const int calls = (int)(2e5 / vectors) + 1;
    for (const fastrnn_kernels *const *k = fastrnn_kernels_available(); *k; k++)
        for (int cell = 0; cell < 2; cell++) {
            double best = 1e9;
            for (int round = 0; round < 7; round++) {
                /* the pre-activations as the recurrence leaves them (the kernel overwrites them) */
                for (long i = 0; i < (long)M * 5 * H; i++) save[i] = uniform(4);
                const double t0 = now();
                for (int c = 0; c < calls; c++) {
                    if (cell == 0)
                        (*k)->f32.lstm_cell(M, H, 0, H, srow, (const float *const *)prow,
                                            hrow);
                    else
                        (*k)->f32.gru_cell(M, H, 0, H, srow, (const float *const *)rrow,
                                           (const float *const *)prow, hrow);
                }
                const double t = (now() - t0) / calls;
                if (t < best) best = t;
            }
            printf("%-12s %-4s M=%d H=%d: %8.3f us per call, %5.1f ns per 16 units\n",
                   (*k)->name, cell == 0 ? "lstm" : "gru", M, H, best * 1e6,
                   best * 1e9 / vectors);
        }
    free(save);
    free(r);
    free(prev);
    free(h);
    free(rows);
    return 0;
}
