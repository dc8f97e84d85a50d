/* Baseline build: 16-byte vectors (SSE2 on x86-64, NEON on arm64), no FMA. */
#define FR_SUFFIX portable
#define FR_NAME_STR "portable"
#define FR_VBYTES 16
#define FR_MR 4
#include "kernels_build.h"
