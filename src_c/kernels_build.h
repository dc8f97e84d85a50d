/* Compile every kernel for one instruction set: included once by each kernels_<isa>.c.
 *
 * The includer defines FR_SUFFIX (symbol suffix), FR_NAME_STR, FR_VBYTES (SIMD register
 * width in bytes), FR_MR (rows per register block) and, for vdpbf16ps, FR_NATIVE_BF16
 * (with <immintrin.h> included). The bodies use GCC/clang vector
 * extensions, so one source yields SSE2, AVX2+FMA and AVX-512 code; kernels_dtype.h holds
 * them and is included once for float and once for double. The result is the build's
 * table, fastrnn_kernels_<FR_SUFFIX> (kernels.h).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "aligned_memory.h"
#include "kernels.h"

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#define FR_NAME(name) FR_CAT(name, FR_SUFFIX)
#define FR_FLOAT(name) FR_NAME(FR_CAT(s, name))
#define FR_DOUBLE(name) FR_NAME(FR_CAT(d, name))
#define FR_BFLOAT(name) FR_NAME(FR_CAT(b, name))

#define FR_BF16 0
#define REAL float
#define FR_P FR_FLOAT
#define FR_IS_FLOAT 1
#include "kernels_dtype.h"
#undef REAL
#undef FR_P
#undef FR_IS_FLOAT

#define REAL double
#define FR_P FR_DOUBLE
#define FR_IS_FLOAT 0
#include "kernels_dtype.h"
#undef REAL
#undef FR_P
#undef FR_IS_FLOAT

/* float32 arrays with bfloat16 products: the matrix-product kernels once more, in the
 * mode FR_BF16 selects (gemm.h): 2, vdpbf16ps on pairs of k (the includer defined
 * FR_NATIVE_BF16); 1, operands rounded for the float32 tile */
#undef FR_BF16
#define REAL float
#define FR_P FR_BFLOAT
#define FR_IS_FLOAT 1
#ifdef FR_NATIVE_BF16
#define FR_BF16 2
#else
#define FR_BF16 1
#endif
#include "kernels_dtype.h"
#undef REAL
#undef FR_P
#undef FR_IS_FLOAT
#undef FR_BF16

/* One element type's table: the same fields for float and double (P: FR_FLOAT, FR_DOUBLE) */
#define FR_KERNEL_TABLE(P)                                                                    \
    {                                                                                         \
        .gemm = P(gemm), .gemm_team_size = P(gemm_team_size), .gemm_at_team = P(gemm_at_team), \
        .weight_grads_at_team = P(weight_grads_at_team), .packed_size = P(packed_size),       \
        .pack = P(pack), .rnn_step = P(rnn_step), .rnn_input_step = P(rnn_input_step),        \
        .gru_step = P(gru_step), .input_step = P(input_step), .bptt_da = P(bptt_da),          \
        .bptt_g = P(bptt_g), .lstm_cell = P(lstm_cell), .lstm_cell_grad = P(lstm_cell_grad),  \
        .gru_cell = P(gru_cell), .gru_cell_grad = P(gru_cell_grad),                           \
    }

const fastrnn_kernels FR_NAME(fastrnn_kernels) = {
    .name = FR_NAME_STR,
    .f32 = FR_KERNEL_TABLE(FR_FLOAT),
    .f64 = FR_KERNEL_TABLE(FR_DOUBLE),
    .bf16 =
        {
            .gemm = FR_BFLOAT(gemm), .gemm_team_size = FR_BFLOAT(gemm_team_size),
            .gemm_at_team = FR_BFLOAT(gemm_at_team),
            .weight_grads_at_team = FR_BFLOAT(weight_grads_at_team),
            .packed_size = FR_BFLOAT(packed_size), .pack = FR_BFLOAT(pack),
            .rnn_step = FR_BFLOAT(rnn_step), .rnn_input_step = FR_BFLOAT(rnn_input_step),
            .gru_step = FR_BFLOAT(gru_step), .input_step = FR_BFLOAT(input_step),
            .bptt_g = FR_BFLOAT(bptt_g),
            /* no products: float32's */
            .bptt_da = FR_FLOAT(bptt_da), .lstm_cell = FR_FLOAT(lstm_cell),
            .lstm_cell_grad = FR_FLOAT(lstm_cell_grad), .gru_cell = FR_FLOAT(gru_cell),
            .gru_cell_grad = FR_FLOAT(gru_cell_grad),
        },
};
