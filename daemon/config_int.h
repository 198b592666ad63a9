/* config_int.h - what the command line (config.c) and the JSON file reader
 * (config_file.c) share.  Internal to the daemon core. */
#ifndef KVD_CONFIG_INT_H
#define KVD_CONFIG_INT_H

#include <stddef.h>
#include "config.h"

/* Scalar settings of the file, kept apart so the command line can override. */
struct kvd_cfg_scalars {
        char *socket, *events, *metrics, *group;
        int   has_socket, has_events, has_metrics, has_group;
        int   log_level, has_log_level;
};

/* Formats a message into err (may be NULL) and returns -EINVAL. */
int  kvd_cfg_fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* A spec with nothing given: backend auto, default pressure thresholds. */
void kvd_cfg_spec_defaults(struct kvd_pool_spec *s);
/* Field checks: 0 or -EINVAL with a message that starts with where. */
int  kvd_cfg_check_name(const char *name, const char *where, char *err, size_t errlen);
int  kvd_cfg_check_backend(const char *v, const char *where, char *err, size_t errlen);
int  kvd_cfg_check_dtype(const char *v, enum kvc_dtype *ret, const char *where, char *err, size_t errlen);
/* Checks a complete spec (everything required given, geometry, capacity). */
int  kvd_cfg_check_spec(const struct kvd_pool_spec *s, const char *where, char *err, size_t errlen);

/* Several GPUs (issue 8).  Sets s->tp_size from a given value: 1 to 64,
 * else -EINVAL naming key. */
int  kvd_cfg_set_tp_size(struct kvd_pool_spec *s, uint32_t v, const char *key, char *err, size_t errlen);
/* A CUDA ordinal from a config (0 to 1024: the driver's own limit is far
 * lower, this catches typos and negative values): 0 or -EINVAL naming key. */
int  kvd_cfg_check_device(long long v, const char *key, char *err, size_t errlen);
/* Appends device v to s->devices; key names the entry for messages
 * ("FILE: pools[0].devices[1]", "--pool devices").  -EINVAL for a negative,
 * implausible or repeated ordinal, or too many. */
int  kvd_cfg_add_device(struct kvd_pool_spec *s, long long v, const char *key, char *err, size_t errlen);
/* Checks tp_size and devices of a parsed spec before expansion: tp_size 1 to
 * 64 dividing kv_heads, one device per rank, no "device" beside them
 * (has_device), no explicit scales.tp_rank with tp_size, names that fit. */
int  kvd_cfg_check_multi(const struct kvd_pool_spec *s, int has_device, const char *where, char *err, size_t errlen);

/* Pools a spec expands into: tp_size, else its number of devices, else 1. */
uint32_t kvd_cfg_expanded_count(const struct kvd_pool_spec *s);
/* Expands s into out[*k..] (advancing *k): copies for a plain spec, one spec
 * per rank or device otherwise (see config.h), each with its own scales_cfg.
 * 0, -ENOMEM, or -EINVAL with err starting with where. */
int  kvd_cfg_expand_one(const struct kvd_pool_spec *s, const char *where, struct kvd_pool_spec *out, uint32_t *k,
                        char *err, size_t errlen);

/* Reads the JSON config file: scalars into *sc, pools into a new array
 * *pools of *npools specs.  0 or a negative errno with err naming the file
 * and the key; what was read so far stays in *sc / *pools for the caller to
 * free. */
int kvd_cfg_load_file(const char *file, struct kvd_cfg_scalars *sc, struct kvd_pool_spec **pools,
                      uint32_t *npools, char *err, size_t errlen);

#endif
