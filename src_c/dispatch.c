/* Run-time choice of kernel build by CPU features (as NumPy's CPU dispatch). */
#include "kernels.h"

extern const fastrnn_kernels fastrnn_kernels_portable;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FR_X86 1
extern const fastrnn_kernels fastrnn_kernels_avx2;
extern const fastrnn_kernels fastrnn_kernels_avx512;
#endif

const fastrnn_kernels *const *fastrnn_kernels_compiled(void) {
    static const fastrnn_kernels *const list[] = {
#ifdef FR_X86
        &fastrnn_kernels_avx512, &fastrnn_kernels_avx2,
#endif
        &fastrnn_kernels_portable, 0};
    return list;
}

const fastrnn_kernels *const *fastrnn_kernels_available(void) {
    static const fastrnn_kernels *list[4];
    int n = 0;
#ifdef FR_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
        list[n++] = &fastrnn_kernels_avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        list[n++] = &fastrnn_kernels_avx2;
#endif
    list[n++] = &fastrnn_kernels_portable;
    list[n] = 0;
    return list;
}
