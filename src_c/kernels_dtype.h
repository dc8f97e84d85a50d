/* Every kernel body for one element type, topic by topic; included three times by
 * kernels_build.h, with REAL (float or double), FR_P(name) (the symbol of `name` for this
 * type and build), FR_IS_FLOAT and, for bfloat16 products, FR_BF16 (gemm.h) set. The
 * macros a topic defines for the ones after it (vector width, panel and block sizes) are
 * undefined at the end, ready for the next inclusion. */

#include "vector_math.h"        /* vectors, tanh and relu */
#include "gemm.h"               /* the register tile, packing, gemm */
#include "gemm_team.h"          /* gemm_at_team, weight_grads_at_team */
#include "recurrence_steps.h"   /* rnn_step, rnn_input_step, input_step, bptt_da, bptt_g */
#if !FR_BF16 /* pointwise: the bf16 table uses float32's */
#include "cell_steps.h"         /* lstm_cell, gru_cell and their derivatives */
#endif

#undef VEC
#undef VL
#undef IVEC
#undef NV
#undef NR
#undef KC
#undef NC
#undef KSTEP
#undef KUNIT
#undef CHUNK
#undef FR_TRANSPOSE_TILES
