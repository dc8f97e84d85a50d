/* Baseline build: whatever the compiler targets by default (SSE2 on x86-64). */
#define FR_SUFFIX portable
#define FR_NAME_STR "portable"
#include "kernels_impl.h"
