/* scales.h - per-layer FP8 scaling factors for a pool (design §3).
 *
 * Sources, chosen by the pool's "scales" config object:
 *   {"source": "constant", "k": 1.0, "v": 1.0}           (default, warns)
 *   {"source": "json", "path": FILE, "tp_rank": N}       vLLM/SGLang
 *        --quantization-param-path schema; one factor serves K and V
 *   {"source": "safetensors", "path": FILE}               a checkpoint or a
 *        sharded checkpoint's model.safetensors.index.json
 * Every error names the file, the key or layer, and what was expected, in
 * err; nothing falls back silently.
 */
#ifndef KVD_SCALES_H
#define KVD_SCALES_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

struct kvd_scales {
        char     source[32];   /* "constant", "json", "safetensors" */
        char     path[512];    /* "" for constant */
        uint32_t num_layers;
        float   *k;            /* [num_layers], malloc'ed */
        float   *v;            /* [num_layers] */
        float    k_min, k_max, v_min, v_max;
        int      warn_unscaled; /* 1: constant source on an fp8 pool, caller should warn */
};

/* Loads scales for a pool of num_layers layers from cfg (the pool's "scales"
 * object; NULL = constant 1.0).  kv_dtype_name is the pool's dtype name, used
 * to check the JSON file's kv_cache.dtype against it.  On success fills *ret
 * (free with kvd_scales_fini); on failure returns -EINVAL/-ENOENT/-EIO/-ENOMEM
 * with a message in err and leaves *ret untouched. */
int kvd_scales_load(const cJSON *cfg, uint32_t num_layers, const char *kv_dtype_name,
                    struct kvd_scales *ret, char *err, size_t errlen);
void kvd_scales_fini(struct kvd_scales *s);

#endif
