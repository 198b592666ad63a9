/* config.h - kvpoold's configuration: command line, JSON config file, and the
 * built-in defaults.
 *
 * Precedence: the command line overrides the file for scalar options
 * (socket, events, metrics, group, log level); --pool adds pools to those of
 * the file.  The socket defaults to $KVPOOL_SOCKET, else
 * ipc:///run/kvpool/kvpool.sock.  Without any pool the daemon serves the
 * built-in default pool (kvd_config_default_pool).
 *
 * Every error names where it came from (the file, the option) and the key
 * (pools[1].head_dim), and says what was expected.
 *
 * Several GPUs (issue 8): a spec with "tp_size": N (--pool tp_size=N)
 * expands into N pools, one per tensor-parallel rank r, named "<name>.tp<r>"
 * (a worker of rank r attaches to that name), each with kv_heads/N heads on
 * devices[r] ("devices": [..], --pool devices=0:1; default 0..N-1), the same
 * dtype, layers, head_dim and page_size, the capacity as given (per rank),
 * and for a "json" scales source the factors of rank r (the file must have
 * N ranks; tp_rank may not be set by hand).  Other scale sources are shared.
 * "devices" without tp_size gives one pool "<name>.dev<d>" per device d with
 * all kv_heads (data parallel).  The expanded specs are what kvd_config
 * holds: spec_name is the name before expansion, tp_rank/tp_size the rank.
 */
#ifndef KVD_CONFIG_H
#define KVD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include "pool.h"

#define KVD_MAX_POOLS 64u  /* a session's attachments are a 64-bit mask */
#define KVD_DEFAULT_METRICS "127.0.0.1:9464"

struct kvd_config {
        char    *config_path;   /* --config, or NULL */
        char    *socket_url;    /* always set after kvd_config_parse */
        char    *events_url;    /* NULL = events off */
        char    *metrics_addr;  /* NULL = metrics off */
        char    *group;         /* NULL = no group */
        gid_t    gid;           /* resolved group when group != NULL */
        int      log_level;     /* enum kvd_log_level */
        int      check_config;  /* --check-config */
        int      help;          /* --help: print kvd_config_usage and exit 0 */
        int      version;       /* --version */
        int      default_pool;  /* 1 when no pool was configured (built-in one added) */
        struct kvd_pool_spec *pools;
        uint32_t num_pools;
};

/* Parses argv (and the --config file it names, and KVPOOL_SOCKET), applies
 * defaults, and validates everything that can be checked without allocating
 * (geometry with kv_geom_check, names, duplicates, capacity forms, the
 * group) and expands tp_size/devices.  Scales are not loaded here (see
 * kvd_config_load_scales); only a tp_size spec's JSON scales file is read,
 * to check that it has a rank per pool.  On
 * success fills *ret (free with kvd_config_fini); on failure returns -EINVAL
 * (or -ENOENT/-EIO/-ENOMEM) with a one-line message in err, and *ret is
 * untouched.  With --help or --version it returns 0 with help/version set and
 * nothing else guaranteed. */
int kvd_config_parse(int argc, char **argv, struct kvd_config *ret, char *err, size_t errlen);
void kvd_config_fini(struct kvd_config *c);

/* Usage text for --help. */
const char *kvd_config_usage(void);

/* Parses one --pool value "name=…,dtype=…,layers=…,kv_heads=…,head_dim=…,
 * page_size=…,capacity=…[,backend=auto|host|cuda][,device=N][,tp_size=N]
 * [,devices=0:1:…]" into *ret (pressure thresholds get their defaults), not
 * yet expanded over tp_size/devices.  Returns 0 or -EINVAL with the bad key
 * in err. */
int kvd_config_parse_pool_arg(const char *arg, struct kvd_pool_spec *ret, char *err, size_t errlen);

/* Parses a capacity: bytes with an optional K/M/G/T (powers of 1000) or
 * Ki/Mi/Gi/Ti (powers of 1024) suffix and an optional trailing "B" ("8GiB",
 * "512Mi", "1000000"), or a fraction of the device's free memory ("0.9",
 * "90%").  Exactly one of *ret_bytes / *ret_fraction is non-zero on success.
 * Returns 0 or -EINVAL with a message in err. */
int kvd_config_parse_capacity(const char *s, uint64_t *ret_bytes, double *ret_fraction,
                              char *err, size_t errlen);

/* Fills the built-in default pool: "default", fp8_e4m3, 32 layers, 8 kv
 * heads, head_dim 128, page_size 16, 256 MiB, backend auto. */
void kvd_config_default_pool(struct kvd_pool_spec *ret);

/* Loads the scales of every pool (kvd_scales_load), printing each pool's
 * scale source and range to f (NULL: print nothing): all of them before
 * any pool is made, so that a bad scales file of the last pool costs no
 * allocation of the first ones.  With ret, *ret gets an array of
 * c->num_pools loaded scales (kvd_pool_new takes each over; free what it
 * did not take with kvd_scales_fini, then the array with free()); without,
 * they are freed again (--check-config).  Returns 0 or the first error
 * with err, *ret untouched. */
int kvd_config_load_scales(const struct kvd_config *c, FILE *f, struct kvd_scales **ret, char *err, size_t errlen);

/* Prints the pools as --check-config shows them (geometry, capacity in pages,
 * tokens and bytes where the capacity is in bytes) to f. */
void kvd_config_print(const struct kvd_config *c, FILE *f);

/* The daemon's settings from its environment (KVPOOLD_*): $name as a
 * number from lo to hi, digits only (no sign, no blanks); dflt when unset,
 * and also, with a warning naming the variable and what it counts (what:
 * "milliseconds"), when it is anything else. */
unsigned long kvd_env_number(const char *name, unsigned long lo, unsigned long hi, unsigned long dflt,
                             const char *what);

/* Frees what a spec owns (its scales object); accepts NULL. */
void kvd_pool_spec_fini(struct kvd_pool_spec *s);

#endif
