/* Run-time choice of kernel build by CPU features (as NumPy's CPU dispatch). */
#include "kernels.h"

extern const fastrnn_kernels fastrnn_kernels_portable;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FR_X86 1
extern const fastrnn_kernels fastrnn_kernels_avx2;
extern const fastrnn_kernels fastrnn_kernels_avx512;
/* the compilers that know AVX512_BF16 (as kernels_avx512_bf16.c) */
#if defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10
#define FR_X86_BF16 1
extern const fastrnn_kernels fastrnn_kernels_avx512_bf16;
#endif
#endif

const fastrnn_kernels *const *fastrnn_kernels_compiled(void) {
    static const fastrnn_kernels *const list[] = {
#ifdef FR_X86_BF16
        &fastrnn_kernels_avx512_bf16,
#endif
#ifdef FR_X86
        &fastrnn_kernels_avx512, &fastrnn_kernels_avx2,
#endif
        &fastrnn_kernels_portable, 0};
    return list;
}

const fastrnn_kernels *const *fastrnn_kernels_available(void) {
    static const fastrnn_kernels *list[5];
    int n = 0;
#ifdef FR_X86
    __builtin_cpu_init();
    const int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                       __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
#ifdef FR_X86_BF16
    if (avx512 && __builtin_cpu_supports("avx512bf16")) list[n++] = &fastrnn_kernels_avx512_bf16;
#endif
    if (avx512) list[n++] = &fastrnn_kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        list[n++] = &fastrnn_kernels_avx2;
#endif
    list[n++] = &fastrnn_kernels_portable;
    list[n] = 0;
    return list;
}
