/* Every kernel body for one element type, topic by topic; included twice by kernels_build.h,
 * with REAL (float or double), FR_P(name) (the symbol of `name` for this type and build)
 * and FR_IS_FLOAT set. The macros a topic defines for the ones after it (vector width,
 * panel and block sizes) are undefined at the end, ready for the other type. */

#include "vector_math.h"        /* vectors, tanh and relu */
#include "gemm.h"               /* the register tile, packing, gemm */
#include "gemm_team.h"          /* gemm_at_team, weight_grads_at_team */
#include "recurrence_steps.h"   /* rnn_step, rnn_input_step, input_step, bptt_da, bptt_g */
#include "cell_steps.h"         /* lstm_cell, gru_cell and their derivatives */

#undef VEC
#undef VL
#undef IVEC
#undef NV
#undef NR
#undef KC
#undef NC
