/* AVX2 + FMA build of the generic kernels (x86-64 only). */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "isa_target.h"
FR_TARGET_BEGIN("avx2,fma")
#define FR_SUFFIX avx2
#define FR_NAME_STR "avx2"
#include "kernels_impl.h"
#endif
