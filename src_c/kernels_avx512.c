/* AVX-512 build (x86-64 only): 64-byte vectors, 32 registers. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "isa_target.h"
#include <immintrin.h> /* masked loads and stores (vector_math.h) */
FR_TARGET_BEGIN("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#define FR_SUFFIX avx512
#define FR_NAME_STR "avx512"
#define FR_VBYTES 64
#define FR_MR 8
#include "kernels_build.h"
FR_TARGET_END
#endif
