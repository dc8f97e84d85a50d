/* How the extension was compiled, for fastrnn.show_config(): OpenMP (and its version, 0
 * without it) and the compiler. */
#ifndef FASTRNN_BUILD_INFO_H
#define FASTRNN_BUILD_INFO_H

#ifdef _OPENMP
#define FR_OPENMP_ENABLED 1
#define FR_OPENMP_VERSION _OPENMP
#else
#define FR_OPENMP_ENABLED 0
#define FR_OPENMP_VERSION 0
#endif

#if defined(__clang__)
#define FR_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define FR_COMPILER "gcc " __VERSION__
#elif defined(_MSC_VER)
#define FR_COMPILER "msvc"
#else
#define FR_COMPILER "unknown"
#endif

#endif
