/* Compile the rest of a translation unit for an instruction set chosen by the includer,
 * whatever the default flags: run-time dispatch picks it only on CPUs that have it.
 * GCC and clang spell this differently; FR_TARGET_END closes what FR_TARGET_BEGIN opened. */
#define FR_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define FR_TARGET_BEGIN(t) FR_PRAGMA(clang attribute push(__attribute__((target(t))), apply_to = function))
#define FR_TARGET_END FR_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define FR_TARGET_BEGIN(t) FR_PRAGMA(GCC push_options) FR_PRAGMA(GCC target(t))
#define FR_TARGET_END FR_PRAGMA(GCC pop_options)
#endif
