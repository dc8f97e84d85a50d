/* Read rate of two threads, each streaming a buffer of its own (64-byte AVX-512 loads and
 * adds, nothing else): the bound on a step that reads its weights from L2 or L3 once, as a
 * batch-1 stream step does (README, "Streaming"). Best of 5 rounds.
 *
 *     gcc -O2 -mavx512f -fopenmp tools/read_rate.c -o /tmp/read_rate
 *     for kib in 256 1024 4096; do /tmp/read_rate $kib $((400000 / kib)); done
 *
 * Arguments: KiB per thread, passes over it per round.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 3 || atol(argv[1]) < 1 || atoi(argv[2]) < 1) {
        fprintf(stderr, "usage: %s KIB_PER_THREAD PASSES\n", argv[0]);
        return 2;
    }
    const size_t bytes = (size_t)atol(argv[1]) << 10;
    const int passes = atoi(argv[2]);
    double best = 0;
#pragma omp parallel num_threads(2)
    {
        float *buf = aligned_alloc(64, bytes); /* whole KiB: a multiple of the alignment */
        if (!buf) {
            fprintf(stderr, "could not allocate %zu bytes\n", bytes);
            exit(1);
        }
        for (size_t i = 0; i < bytes / 4; i++) buf[i] = 1e-3f * (float)(i % 7);
        for (int round = 0; round < 5; round++) {
            __m512 acc[8];
#pragma omp barrier
            double t0 = omp_get_wtime();
            for (int p = 0; p < passes; p++) {
                for (int a = 0; a < 8; a++) acc[a] = _mm512_setzero_ps();
                for (size_t i = 0; i < bytes / 4; i += 128) /* 8 independent chains */
                    for (int a = 0; a < 8; a++)
                        acc[a] = _mm512_add_ps(acc[a], _mm512_load_ps(buf + i + a * 16));
                /* the sums are "used": the loads stay */
                __asm__ volatile("" ::"v"(acc[0]), "v"(acc[1]), "v"(acc[2]), "v"(acc[3]),
                                 "v"(acc[4]), "v"(acc[5]), "v"(acc[6]), "v"(acc[7]));
            }
#pragma omp barrier
#pragma omp master
            {
                double rate = 2.0 * (double)bytes * passes / (omp_get_wtime() - t0) / 1e9;
                if (rate > best) best = rate;
            }
        }
        free(buf);
    }
    printf("%zu KiB per thread: %.0f GB/s on 2 threads (best of 5)\n", bytes >> 10, best);
    return 0;
}
