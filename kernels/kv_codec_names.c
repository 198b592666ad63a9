/* kv_codec_names.c - dtype names and their parser (public: kvclient.h). */
#include <errno.h>
#include <stddef.h>
#include <string.h>
#include <strings.h>

#include "kvclient.h"

/* Canonical names, indexed by enum kvc_dtype (wire values). */
static const char *const names[KVC_DTYPE__COUNT] = {
        [KVC_DTYPE_BF16]     = "bf16",
        [KVC_DTYPE_FP16]     = "fp16",
        [KVC_DTYPE_FP8_E4M3] = "fp8_e4m3",
        [KVC_DTYPE_FP8_E5M2] = "fp8_e5m2",
        [KVC_DTYPE_FP4_E2M1] = "fp4_e2m1",
};

/* Spellings used by serving engines and checkpoints, accepted on input so a
 * config can say what the engine's flag says.  Never produced on output. */
static const struct {
        const char     *name;
        enum kvc_dtype  dtype;
} aliases[] = {
        { "bfloat16",       KVC_DTYPE_BF16 },
        { "float16",        KVC_DTYPE_FP16 },
        { "half",           KVC_DTYPE_FP16 },
        { "fp8",            KVC_DTYPE_FP8_E4M3 },
        { "float8_e4m3fn",  KVC_DTYPE_FP8_E4M3 },
        { "fp8_e4m3fn",     KVC_DTYPE_FP8_E4M3 },
        { "float8_e5m2",    KVC_DTYPE_FP8_E5M2 },
        { "fp4",            KVC_DTYPE_FP4_E2M1 },
        { "float4_e2m1fn",  KVC_DTYPE_FP4_E2M1 },
        { "fp4_e2m1fn",     KVC_DTYPE_FP4_E2M1 },
};

/* Returns the canonical name of d ("bf16", "fp16", "fp8_e4m3", "fp8_e5m2",
 * "fp4_e2m1"), a static string, or NULL if d is not a known dtype.
 * Thread-safe. */
const char *kvc_dtype_name(enum kvc_dtype d)
{
        if ((unsigned)d >= (unsigned)KVC_DTYPE__COUNT)
                return NULL;
        return names[d];
}

/* Parses a dtype name: a canonical name or one of the aliases above, case
 * insensitive.  Returns 0 and sets *ret_dtype, or -EINVAL (name NULL or
 * unknown; *ret_dtype untouched).  Thread-safe. */
int kvc_dtype_parse(const char *name, enum kvc_dtype *ret_dtype)
{
        if (!name || !ret_dtype)
                return -EINVAL;
        for (int d = 0; d < KVC_DTYPE__COUNT; d++) {
                if (strcasecmp(name, names[d]) == 0) {
                        *ret_dtype = (enum kvc_dtype)d;
                        return 0;
                }
        }
        for (size_t i = 0; i < sizeof(aliases) / sizeof(aliases[0]); i++) {
                if (strcasecmp(name, aliases[i].name) == 0) {
                        *ret_dtype = aliases[i].dtype;
                        return 0;
                }
        }
        return -EINVAL;
}
