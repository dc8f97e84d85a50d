/* Where a batch-1 step of the Elman recurrence's column split goes (the grid's S: H = 128),
 * taken apart: the cores' round trip of one cache line, then per step
 *     1 thread   all columns (W_hh from L2 once it exceeds L1);
 *     kernel     2 threads, each its own columns of its own copy of the sequence, no barrier;
 *     + barrier  the same with fr_spin_wait after each step;
 *     recurrence as _recurrence.pxi runs it: one sequence, h_{t-1} half from the other core.
 * Rounds alternate the variants; the medians and the round trips of each round are printed.
 *
 *     gcc -O3 -ffp-contract=fast -fopenmp -Isrc_c tools/column_step.c src_c/dispatch.c \
 *         src_c/scratch.c src_c/kernels_*.c -lm -o /tmp/column_step && /tmp/column_step 128
 *
 * Argument: H (= the number of inputs of W_hh), a multiple of 32. float32, the best kernels.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <omp.h>

#include "aligned_memory.h"
#include "kernels.h"
#include "team.h"

const fastrnn_kernels *const *fastrnn_kernels_available(void);

enum { STEPS = 512, ROUNDS = 31, VARIANTS = 4 };

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* ns for one cache line to go to the other core and back (two threads alternating) */
static double round_trip(void) {
    static struct { _Alignas(64) long ping; _Alignas(64) long pong; } line;
    const long n = 20000;
    double t0 = 0, t1 = 0;
    line.ping = line.pong = 0;
#pragma omp parallel num_threads(2)
    {
        const int tid = omp_get_thread_num();
#pragma omp barrier
        if (tid == 0) t0 = now();
        for (long i = 1; i <= n; i++) {
            if (tid == 0) {
                __atomic_store_n(&line.ping, i, __ATOMIC_RELEASE);
                while (__atomic_load_n(&line.pong, __ATOMIC_ACQUIRE) < i) FR_PAUSE();
            } else {
                while (__atomic_load_n(&line.ping, __ATOMIC_ACQUIRE) < i) FR_PAUSE();
                __atomic_store_n(&line.pong, i, __ATOMIC_RELEASE);
            }
        }
        if (tid == 0) t1 = now();
    }
    return (t1 - t0) / n * 1e9;
}

int main(int argc, char **argv) {
    const int H = argc == 2 ? atoi(argv[1]) : 0;
    if (H < 32 || H > 4096 || H % 32) {
        fprintf(stderr, "usage: %s H (a multiple of 32, 32..4096)\n", argv[0]);
        return 2;
    }
    const fr_kernels_float *k = &fastrnn_kernels_available()[0]->f32;
    const size_t seq = (size_t)STEPS * H;
    float *w = malloc(sizeof(float) * H * H), *p = malloc(sizeof(float) * seq);
    float *wp = fr_aligned_alloc(sizeof(float) * k->packed_size(H, H));
    float *h0 = fr_aligned_alloc(sizeof(float) * H), *out[3];
    for (int i = 0; i < 3; i++) out[i] = fr_aligned_alloc(sizeof(float) * seq);
    if (!w || !p || !wp || !h0 || !out[0] || !out[1] || !out[2]) return 1;
    srand(1);
    for (long i = 0; i < (long)H * H; i++) w[i] = (rand() / (float)RAND_MAX - 0.5f) / H;
    for (size_t i = 0; i < seq; i++) p[i] = rand() / (float)RAND_MAX - 0.5f;
    memset(h0, 0, sizeof(float) * H);
    k->pack(H, H, w, H, 1, NULL, wp);
    double ns[VARIANTS][ROUNDS], trips[ROUNDS];
    for (int round = 0; round < ROUNDS; round++) {
        trips[round] = round_trip();
        for (int i = 0; i < VARIANTS; i++) {
            const int v = (i + round) % VARIANTS, threads = v == 0 ? 1 : 2;
            for (int c = 0; c < 3; c++) memcpy(out[c], p, sizeof(float) * seq);
            fr_spin_barrier barrier = {0, 0};
            const double t0 = now();
#pragma omp parallel num_threads(threads)
            {
                const int tid = omp_get_thread_num();
                const int j0 = tid * H / threads, j1 = (tid + 1) * H / threads;
                /* variant 3 shares one sequence; 1 and 2 give each thread its own */
                float *o = out[v == 3 ? 0 : tid];
                for (int s = 0; s < STEPS; s++) {
                    const float *hprev = s ? o + (size_t)(s - 1) * H : h0;
                    float *row = o + (size_t)s * H;
                    if (v == 3) fr_prefetch(hprev, H * (long)sizeof(float));
                    k->rnn_step(1, H, j0, j1, &hprev, (const float *const *)&row, &row, wp, 0);
                    if (v >= 2) fr_spin_wait(&barrier, threads);
                }
            }
            ns[v][round] = (now() - t0) / STEPS * 1e9;
        }
    }
    const char *names[VARIANTS] = {"1 thread", "kernel", "+ barrier", "recurrence"};
    printf("H=%d, batch 1, %d steps, %d rounds (kernels %s)\n", H, STEPS, ROUNDS,
           fastrnn_kernels_available()[0]->name);
    for (int v = 0; v < VARIANTS; v++) {
        qsort(ns[v], ROUNDS, sizeof(double), by_value);
        printf("  %-11s median %6.0f ns a step (min %6.0f)\n", names[v], ns[v][ROUNDS / 2],
               ns[v][0]);
    }
    qsort(trips, ROUNDS, sizeof(double), by_value);
    printf("  round trip between the cores: median %.0f ns (min %.0f, max %.0f)\n",
           trips[ROUNDS / 2], trips[0], trips[ROUNDS - 1]);
    free(w);
    free(p);
    fr_aligned_free(wp);
    fr_aligned_free(h0);
    for (int i = 0; i < 3; i++) fr_aligned_free(out[i]);
    return 0;
}
