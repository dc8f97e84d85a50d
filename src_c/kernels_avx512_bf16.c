/* AVX-512 build with AVX512_BF16 (x86-64 only): the AVX-512 kernels, and bfloat16 products
 * on vdpbf16ps. */
#if defined(__x86_64__) && (defined(__clang__) ? __clang_major__ >= 9 : __GNUC__ >= 10)
#include "isa_target.h"
#define FR_NATIVE_BF16 1
#include <immintrin.h>
FR_TARGET_BEGIN("avx512f,avx512vl,avx512dq,avx512bw,avx512bf16,avx2,fma")
#define FR_SUFFIX avx512_bf16
#define FR_NAME_STR "avx512_bf16"
#define FR_VBYTES 64
#define FR_MR 8
#include "kernels_build.h"
FR_TARGET_END
#endif
