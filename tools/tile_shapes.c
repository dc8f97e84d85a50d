/* Register tiles of other shapes than the kernels' 8 rows x 32 columns (src_c/gemm.h: FR_MR
 * x NV vectors), alone on one thread: A as row pointers, B packed in panels of kc x the
 * tile's columns, C in L1/L2, the k loop as the kernels' tile runs it. GFLOP/s, best of 7
 * rounds; compare with tools/fma_peak.c's one-thread ceiling.
 *
 *     gcc -O3 -mavx512f -mavx512vl -mfma tools/tile_shapes.c -o /tmp/tile_shapes
 *     /tmp/tile_shapes 256 1024    # k, columns of B (1 MiB of B here)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef float v16 __attribute__((vector_size(64)));

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

#define TILE(MR, NV)                                                                          \
    __attribute__((noinline)) static void tile_##MR##x##NV(const float *const *a,            \
                                                          const float *bp, int K,            \
                                                          float *const *c) {                 \
        v16 acc[MR][NV];                                                                      \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NV; v++) acc[r][v] = (v16){0};                                \
        for (int k = 0; k < K; k++) {                                                         \
            v16 b[NV];                                                                        \
            for (int v = 0; v < NV; v++) memcpy(&b[v], bp + (k * NV + v) * 16, sizeof b[v]); \
            for (int r = 0; r < MR; r++) {                                                    \
                const float x = a[r][k];                                                      \
                for (int v = 0; v < NV; v++) acc[r][v] += x * b[v];                           \
            }                                                                                 \
        }                                                                                     \
        for (int r = 0; r < MR; r++)                                                          \
            for (int v = 0; v < NV; v++) {                                                    \
                v16 t;                                                                        \
                memcpy(&t, c[r] + v * 16, sizeof t);                                          \
                t += acc[r][v];                                                               \
                memcpy(c[r] + v * 16, &t, sizeof t);                                          \
            }                                                                                 \
    }
TILE(8, 2) TILE(10, 2) TILE(12, 2) TILE(14, 2) TILE(8, 3) TILE(7, 3) TILE(6, 4) TILE(4, 4)

typedef void (*tile_fn)(const float *const *, const float *, int, float *const *);

static void run(const char *name, tile_fn tile, int mr, int nv, int K, int columns) {
    const int M = 64 / mr * mr, panels = columns / (nv * 16), width = panels * nv * 16;
    float *A = malloc(sizeof(float) * M * K), *B = aligned_alloc(64, sizeof(float) * K * width);
    float *C = aligned_alloc(64, sizeof(float) * M * width);
    if (!A || !B || !C || panels < 1) exit(1);
    for (long i = 0; i < (long)M * K; i++) A[i] = 1e-3f * (float)(i % 7);
    for (long i = 0; i < (long)K * width; i++) B[i] = 1e-3f * (float)(i % 5);
    memset(C, 0, sizeof(float) * M * width);
    const float *ar[16];
    float *cr[16];
    double best = 1e30, flops = 0;
    for (int round = 0; round < 7; round++) {
        double t = now();
        flops = 0;
        for (int it = 0; it < 200; it++)
            for (int i0 = 0; i0 < M; i0 += mr) /* row block by row block, across the panels */
                for (int q = 0; q < panels; q++) {
                    for (int r = 0; r < mr; r++) {
                        ar[r] = A + (long)(i0 + r) * K;
                        cr[r] = C + (long)(i0 + r) * width + q * nv * 16;
                    }
                    tile(ar, B + (long)q * K * nv * 16, K, cr);
                    flops += 2.0 * mr * nv * 16 * K;
                }
        t = now() - t;
        if (t < best) best = t;
    }
    printf("%-6s k = %d, B %ld KiB: %.1f GFLOP/s\n", name, K, (long)K * width * 4 / 1024,
           flops / best / 1e9);
    free(A);
    free(B);
    free(C);
}

int main(int argc, char **argv) {
    if (argc != 3 || atoi(argv[1]) < 1 || atoi(argv[2]) < 64) {
        fprintf(stderr, "usage: %s K COLUMNS (COLUMNS >= 64)\n", argv[0]);
        return 2;
    }
    const int K = atoi(argv[1]), columns = atoi(argv[2]);
    run("8x32", tile_8x2, 8, 2, K, columns);
    run("10x32", tile_10x2, 10, 2, K, columns);
    run("12x32", tile_12x2, 12, 2, K, columns);
    run("14x32", tile_14x2, 14, 2, K, columns);
    run("8x48", tile_8x3, 8, 3, K, columns);
    run("7x48", tile_7x3, 7, 3, K, columns);
    run("6x64", tile_6x4, 6, 4, K, columns);
    run("4x64", tile_4x4, 4, 4, K, columns);
    return 0;
}
