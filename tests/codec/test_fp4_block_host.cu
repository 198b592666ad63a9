/* test_fp4_block_host.cu - the write kernel's fp4 block encoders for 16-bit
 * input (kv_cuda_fp4.cuh: fp4_block16_bf for bf16, the f16-pair path for
 * f16) on the CPU, through their exact host emulation of each bf16x2/f16x2
 * instruction, against the codec (kv_fp4_encode_block16).
 *
 * The cases are tests/gpu/fp4h_cases.h's (an input value v at position p of
 * a block, in scale class c: v sets the scale, or another element +-6 * 2^e
 * sets it for v's own scale down to codes long past zero, or a NaN or Inf
 * sends the block to the codec path).  The GPU test runs every (v, p, c) on
 * the device with the real instructions; this one runs every v and c at two
 * positions in CI (every position with KVPOOL_EXHAUSTIVE=1), so a change to
 * the encoder's arithmetic is caught without a GPU.  Suite unit; exit status
 * 0 when every block equals the codec's.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fp4h_cases.h"

template <int E>
static unsigned long long sweep(const char *name, bool all)
{
        unsigned long long n = 0, bad = 0;

        for (uint32_t c = 0; c < FP4H_C; c++)
                for (uint32_t p = 0; p < 16; p += all ? 1 : 9)
                        for (uint32_t v = 0; v < 65536; v++) {
                                n++;
                                if (!fp4h_case<E>(v, p, c) && bad++ < 5)
                                        fprintf(stderr, "%s: block of v 0x%04x at %u, class %u differs from the codec\n",
                                                name, v, p, c);
                        }
        printf("%s: %llu blocks, %llu differ from the codec\n", name, n, bad);
        return bad;
}

int main(void)
{
        const char *ex = getenv("KVPOOL_EXHAUSTIVE");
        const bool all = ex && !strcmp(ex, "1");
        unsigned long long bad = sweep<KVC_ELEM_BF16>("fp4 from bf16 (bf16x2)", all);
        bad += sweep<KVC_ELEM_F16>("fp4 from f16 (f16x2)", all);
        return bad ? 1 : 0;
}
