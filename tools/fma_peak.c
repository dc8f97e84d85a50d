/* The instruction ceilings of this CPU's multiply-adds: float32 FMA (vfmadd, 16 lanes) and
 * bfloat16 pairs (vdpbf16ps, 16 lanes x 2 products), 1 and 2 threads, register operands only
 * (12 independent accumulators: no load, no dependency stall). A GEMM cannot beat these;
 * the matmul peak `fastrnn bench` reports (OpenBLAS) is about 85 % of the float32 one.
 *
 *     gcc -O3 -funroll-all-loops -fopenmp tools/fma_peak.c -o /tmp/fma_peak && /tmp/fma_peak
 *
 * Needs AVX-512 with AVX512_BF16 (GCC 10 or clang 9 and newer).
 */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>

#define CHAINS 12

__attribute__((target("avx512f,avx512bf16"))) static float dpbf16(long n) {
    __m512 acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_setzero_ps();
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = x; /* pairs of 1.0 */
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_dpbf16_ps(acc[i], x, y);
        __asm__ volatile("" : "+v"(x)); /* x unknown to the compiler: the loop stays */
    }
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s;
}

__attribute__((target("avx512f"))) static float fma32(long n) {
    __m512 acc[CHAINS];
    for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_setzero_ps();
    __m512 x = _mm512_set1_ps(1e-3f), y = _mm512_set1_ps(1.0f);
    for (long k = 0; k < n; k++) {
        for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(x, y, acc[i]);
        __asm__ volatile("" : "+v"(x));
    }
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(acc[i]);
    return s;
}

int main(void) {
    const long n = 200000000 / CHAINS;
    for (int threads = 1; threads <= 2; threads++)
        for (int bf16 = 0; bf16 <= 1; bf16++) {
            double best = 0;
            for (int round = 0; round < 3; round++) {
                float sink = 0;
                double t0 = omp_get_wtime();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
                sink += bf16 ? dpbf16(n) : fma32(n);
                double flops = (double)threads * n * CHAINS * (bf16 ? 64 : 32);
                double gflops = flops / (omp_get_wtime() - t0) / 1e9;
                if (gflops > best) best = gflops;
                if (sink == 1234.5f) puts(""); /* keeps the result alive */
            }
            printf("%d thread%s %-9s %6.0f GFLOP/s (best of 3)\n", threads,
                   threads > 1 ? "s" : " ", bf16 ? "vdpbf16ps" : "fp32 FMA", best);
        }
    return 0;
}
