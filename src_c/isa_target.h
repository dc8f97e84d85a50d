/* Compile the rest of a translation unit for an instruction set chosen by the includer
 * (FR_TARGET), whatever the default flags: run-time dispatch picks it only on CPUs
 * that have it. GCC and clang spell this differently. */
#if defined(__clang__)
#define FR_PRAGMA(x) _Pragma(#x)
#define FR_TARGET_BEGIN(t) FR_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#elif defined(__GNUC__)
#define FR_PRAGMA(x) _Pragma(#x)
#define FR_TARGET_BEGIN(t) FR_PRAGMA(GCC target(t))
#endif
