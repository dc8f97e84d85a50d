/* Kernel bodies, compiled once per instruction set by kernels_<isa>.c.
 *
 * The includer defines FR_SUFFIX (symbol suffix), FR_NAME_STR, FR_VBYTES (SIMD register
 * width in bytes) and FR_MR (rows per register block). The bodies use GCC/clang vector
 * extensions, so one source yields SSE2, AVX2+FMA and AVX-512 code; kernels_typed.h is
 * included once for float and once for double.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#define FR_NAME(name) FR_CAT(name, FR_SUFFIX)

#define REAL float
#define FR_P(name) FR_NAME(FR_CAT(s, name))
#define FR_IS_FLOAT 1
#include "kernels_typed.h"
#undef REAL
#undef FR_P
#undef FR_IS_FLOAT

#define REAL double
#define FR_P(name) FR_NAME(FR_CAT(d, name))
#define FR_IS_FLOAT 0
#include "kernels_typed.h"
#undef REAL
#undef FR_P
#undef FR_IS_FLOAT

const fastrnn_kernels FR_NAME(fastrnn_kernels) = {
    .name = FR_NAME_STR,
    .sgemm = FR_NAME(s_gemm),
    .dgemm = FR_NAME(d_gemm),
    .sgemm_team_size = FR_NAME(s_gemm_team_size),
    .dgemm_team_size = FR_NAME(d_gemm_team_size),
    .sgemm_at_team = FR_NAME(s_gemm_at_team),
    .dgemm_at_team = FR_NAME(d_gemm_at_team),
    .sweight_grads_at_team = FR_NAME(s_weight_grads_at_team),
    .dweight_grads_at_team = FR_NAME(d_weight_grads_at_team),
    .spacked_size = FR_NAME(s_packed_size),
    .dpacked_size = FR_NAME(d_packed_size),
    .spack = FR_NAME(s_pack),
    .dpack = FR_NAME(d_pack),
    .srnn_step = FR_NAME(s_rnn_step),
    .drnn_step = FR_NAME(d_rnn_step),
    .srnn_input_step = FR_NAME(s_rnn_input_step),
    .drnn_input_step = FR_NAME(d_rnn_input_step),
    .sinput_step = FR_NAME(s_input_step),
    .dinput_step = FR_NAME(d_input_step),
    .sbptt_da = FR_NAME(s_bptt_da),
    .dbptt_da = FR_NAME(d_bptt_da),
    .sbptt_g = FR_NAME(s_bptt_g),
    .dbptt_g = FR_NAME(d_bptt_g),
};
