/* AVX2 + FMA build (x86-64 only): 32-byte vectors, 16 registers. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "isa_target.h"
#include <immintrin.h> /* masked loads and stores (vector_math.h) */
FR_TARGET_BEGIN("avx2,fma")
#define FR_SUFFIX avx2
#define FR_NAME_STR "avx2"
#define FR_VBYTES 32
#define FR_MR 6
#include "kernels_build.h"
FR_TARGET_END
#endif
