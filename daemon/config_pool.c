/* config_pool.c - kvpoold's pool specs (see config.h): defaults, capacity
 * strings, field checks, tensor-parallel and per-device expansion, and the
 * --pool argument.  The command line around them is config.c, the JSON file
 * config_file.c. */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cjson/cJSON.h>
#include "config_int.h"
#include "kv_layout.h"
#include "scales.h"
#include "scales_int.h"

void kvd_pool_spec_fini(struct kvd_pool_spec *s)
{
        if (!s)
                return;
        cJSON_Delete(s->scales_cfg);
        s->scales_cfg = NULL;
}

void kvd_cfg_spec_defaults(struct kvd_pool_spec *s)
{
        memset(s, 0, sizeof(*s));
        strcpy(s->backend, "auto");
        s->geom.dtype = KVC_DTYPE__COUNT; /* "not given" */
        s->pressure_low = 0.10;
        s->pressure_high = 0.20;
}

void kvd_config_default_pool(struct kvd_pool_spec *ret)
{
        kvd_cfg_spec_defaults(ret);
        strcpy(ret->name, "default");
        ret->geom.dtype = KVC_DTYPE_FP8_E4M3;
        ret->geom.num_layers = 32;
        ret->geom.kv_heads = 8;
        ret->geom.head_dim = 128;
        ret->geom.page_size = 16;
        ret->capacity_bytes = 256ull << 20;
}

/* ---- capacity ----------------------------------------------------------- */

int kvd_config_parse_capacity(const char *s, uint64_t *ret_bytes, double *ret_fraction,
                              char *err, size_t errlen)
{
        static const char expect[] =
                "expected bytes (e.g. 8GiB, 512MiB, 1G, 1073741824) or a fraction of free GPU memory (0.9 or 90%)";
        const char *p;
        char       *end;
        double      v, mult = 1.0;
        int         has_dot;

        if (!s)
                return kvd_cfg_fail(err, errlen, "capacity missing: %s", expect);
        while (isspace((unsigned char)*s))
                s++;
        if (!*s || *s == '-' || *s == '+')
                return kvd_cfg_fail(err, errlen, "capacity \"%s\": %s", s, expect);
        errno = 0;
        v = strtod(s, &end);
        if (end == s || errno || !isfinite(v) || v <= 0)
                return kvd_cfg_fail(err, errlen, "capacity \"%s\": %s", s, expect);
        has_dot = memchr(s, '.', (size_t)(end - s)) || memchr(s, 'e', (size_t)(end - s)) ||
                  memchr(s, 'E', (size_t)(end - s));
        p = end;
        while (isspace((unsigned char)*p))
                p++;
        if (*p == '%') {
                p++;
                while (isspace((unsigned char)*p))
                        p++;
                if (*p || v > 100.0)
                        return kvd_cfg_fail(err, errlen, "capacity \"%s\": a percentage must be in (0, 100]%%", s);
                *ret_fraction = v / 100.0;
                *ret_bytes = 0;
                return 0;
        }
        if (!*p && has_dot) {
                if (v > 1.0)
                        return kvd_cfg_fail(err, errlen, "capacity \"%s\": a fraction must be in (0, 1]; %s", s, expect);
                *ret_fraction = v;
                *ret_bytes = 0;
                return 0;
        }
        if (*p) {
                double base = 1000.0;
                int    exp;

                switch (toupper((unsigned char)*p)) {
                case 'K': exp = 1; break;
                case 'M': exp = 2; break;
                case 'G': exp = 3; break;
                case 'T': exp = 4; break;
                case 'B': exp = 0; break;
                default:
                        return kvd_cfg_fail(err, errlen, "capacity \"%s\": unknown suffix \"%s\"; %s", s, p, expect);
                }
                if (exp) {
                        p++;
                        if (*p == 'i' || *p == 'I') {
                                base = 1024.0;
                                p++;
                        }
                }
                if (*p == 'B' || *p == 'b')
                        p++;
                if (*p)
                        return kvd_cfg_fail(err, errlen, "capacity \"%s\": unknown suffix; %s", s, expect);
                for (int i = 0; i < exp; i++)
                        mult *= base;
        }
        v = v * mult;
        if (v < 1.0 || v > 1.8e19)
                return kvd_cfg_fail(err, errlen, "capacity \"%s\": out of range; %s", s, expect);
        /* round(), not llround(): v may exceed INT64_MAX (up to 1.8e19), and
         * llround() overflows there; every v in range fits a uint64_t. */
        *ret_bytes = (uint64_t)round(v);
        *ret_fraction = 0.0;
        return 0;
}

/* ---- pool fields ---------------------------------------------------------- */

int kvd_cfg_check_name(const char *name, const char *where, char *err, size_t errlen)
{
        size_t n = strlen(name);

        if (n == 0 || n >= KV_NAME_LEN)
                return kvd_cfg_fail(err, errlen, "%s: expected a pool name of 1 to %u characters, got \"%s\"",
                            where, KV_NAME_LEN - 1, name);
        for (size_t i = 0; i < n; i++) {
                unsigned char c = (unsigned char)name[i];
                /* The name goes into the shm object name and the status JSON. */
                if (!isalnum(c) && c != '_' && c != '-' && c != '.' && c >= 0x20 && c < 0x7f)
                        return kvd_cfg_fail(err, errlen,
                                    "%s: \"%s\" has a '%c': expected letters, digits, '_', '-' and '.'",
                                    where, name, c);
                /* a control character or a byte of a UTF-8 sequence shown
                 * as '%c' is invisible or half a character: name its value */
                if (!isalnum(c) && c != '_' && c != '-' && c != '.')
                        return kvd_cfg_fail(err, errlen,
                                    "%s: \"%s\" has byte 0x%02x at offset %zu: expected ASCII letters, digits, "
                                    "'_', '-' and '.'", where, name, c, i);
        }
        return 0;
}

static int parse_u32_str(const char *v, uint32_t *ret)
{
        char              *end;
        unsigned long long x;

        if (!v || !isdigit((unsigned char)*v))
                return -EINVAL;
        errno = 0;
        x = strtoull(v, &end, 10);
        if (errno || *end || x > UINT32_MAX)
                return -EINVAL;
        *ret = (uint32_t)x;
        return 0;
}

int kvd_cfg_check_backend(const char *v, const char *where, char *err, size_t errlen)
{
        if (strcmp(v, "auto") && strcmp(v, "host") && strcmp(v, "cuda"))
                return kvd_cfg_fail(err, errlen, "%s: expected \"auto\", \"host\" or \"cuda\", got \"%s\"", where, v);
        return 0;
}

int kvd_cfg_check_dtype(const char *v, enum kvc_dtype *ret, const char *where, char *err, size_t errlen)
{
        if (kvc_dtype_parse(v, ret) != 0)
                return kvd_cfg_fail(err, errlen,
                            "%s: expected bf16, fp16, fp8_e4m3, fp8_e5m2 or fp4_e2m1, got \"%s\"", where, v);
        return 0;
}

/* Checks a complete spec: every required field given, geometry valid, a
 * fraction only where a GPU can be used.  where: "FILE: pools[1]" or
 * "--pool 'x'". */
int kvd_cfg_check_spec(const struct kvd_pool_spec *s, const char *where, char *err, size_t errlen)
{
        char e[256];

        if (!s->name[0])
                return kvd_cfg_fail(err, errlen, "%s.name: missing (every pool needs a name)", where);
        if (s->geom.dtype == KVC_DTYPE__COUNT)
                return kvd_cfg_fail(err, errlen, "%s.dtype: missing (bf16, fp16, fp8_e4m3, fp8_e5m2 or fp4_e2m1)", where);
        if (!s->geom.num_layers)
                return kvd_cfg_fail(err, errlen, "%s.layers: missing or 0 (expected 1 to %u)", where, KV_MAX_LAYERS);
        if (!s->geom.kv_heads)
                return kvd_cfg_fail(err, errlen, "%s.kv_heads: missing or 0 (expected 1 to 256)", where);
        if (!s->geom.head_dim)
                return kvd_cfg_fail(err, errlen, "%s.head_dim: missing or 0 (expected 64, 128 or 256)", where);
        if (!s->geom.page_size)
                return kvd_cfg_fail(err, errlen, "%s.page_size: missing or 0 (expected 1 to 1024)", where);
        if (!s->capacity_bytes && s->capacity_fraction <= 0)
                return kvd_cfg_fail(err, errlen, "%s.capacity: missing (e.g. \"8GiB\" or \"90%%\")", where);
        if (s->geom.num_layers > KV_MAX_LAYERS)
                return kvd_cfg_fail(err, errlen, "%s.layers: %u is above the limit %u", where,
                            s->geom.num_layers, KV_MAX_LAYERS);
        if (s->geom.kv_heads > 256)
                return kvd_cfg_fail(err, errlen, "%s.kv_heads: %u is above the limit 256", where, s->geom.kv_heads);
        if (s->geom.page_size > 1024)
                return kvd_cfg_fail(err, errlen, "%s.page_size: %u is above the limit 1024", where, s->geom.page_size);
        if (s->geom.head_dim % 16 || s->geom.head_dim > 512)
                return kvd_cfg_fail(err, errlen,
                            "%s.head_dim: expected 64, 128 or 256 (host pools: a multiple of 16 up to 512), got %u",
                            where, s->geom.head_dim);
        if (kv_geom_check(&s->geom, e, sizeof(e)) != 0)
                return kvd_cfg_fail(err, errlen, "%s: %s", where, e);
        if (s->capacity_bytes) {
                struct kv_layout L;
                /* the allocation is whole 2 MiB units within the capacity */
                if (s->capacity_bytes < KV_POOL_ALIGN)
                        return kvd_cfg_fail(err, errlen,
                                            "%s.capacity: %llu bytes is less than one 2 MiB unit (a pool is one "
                                            "allocation of whole 2 MiB units, at most the capacity)",
                                            where, (unsigned long long)s->capacity_bytes);
                if (kv_layout_fit(&s->geom, s->capacity_bytes, &L) != 0)
                        return kvd_cfg_fail(err, errlen, "%s.capacity: %llu bytes do not hold a single page of this geometry",
                                    where, (unsigned long long)s->capacity_bytes);
                if (L.num_pages > KVD_PAGES_MAX)
                        return kvd_cfg_fail(err, errlen,
                                    "%s.capacity: %llu bytes hold %u pages of this geometry, more than the %u a pool can have "
                                    "(lower the capacity or use larger pages)",
                                    where, (unsigned long long)s->capacity_bytes, L.num_pages, KVD_PAGES_MAX);
        }
        if (s->capacity_fraction > 0 && !kvd_backend_cuda)
                return kvd_cfg_fail(err, errlen,
                            "%s.capacity: a fraction (%g) is a share of free GPU memory, but this kvpoold was built without CUDA; give bytes (e.g. \"8GiB\")",
                            where, s->capacity_fraction);
        /* what pool creation would refuse for "backend": "cuda" on any
         * machine, refused here so that --check-config says it ("auto"
         * may still fall back to a host pool, which takes other head_dims) */
        if (strcmp(s->backend, "cuda") == 0 && !kv_cuda_head_dim_ok(s->geom.head_dim))
                return kvd_cfg_fail(err, errlen, "%s.head_dim: %u, but CUDA pools support head_dim 64, 128 or 256",
                            where, s->geom.head_dim);
        if (s->capacity_fraction > 0 && strcmp(s->backend, "host") == 0)
                return kvd_cfg_fail(err, errlen,
                            "%s.capacity: a fraction (%g) is a share of free GPU memory; host pools need bytes (e.g. \"8GiB\")",
                            where, s->capacity_fraction);
        if (s->pressure_low < 0 || s->pressure_high > 1 || s->pressure_low > s->pressure_high)
                return kvd_cfg_fail(err, errlen,
                            "%s.pressure: expected 0 <= low <= high <= 1, got low %g high %g",
                            where, s->pressure_low, s->pressure_high);
        return 0;
}

/* ---- several GPUs: tp_size and devices ------------------------------------ */

int kvd_cfg_set_tp_size(struct kvd_pool_spec *s, uint32_t v, const char *key, char *err, size_t errlen)
{
        if (v == 0 || v > KVD_MAX_DEVICES)
                return kvd_cfg_fail(err, errlen, "%s: expected 1 to %u tensor-parallel ranks, got %u", key,
                                    KVD_MAX_DEVICES, v);
        s->tp_size = v;
        return 0;
}

int kvd_cfg_check_device(long long v, const char *key, char *err, size_t errlen)
{
        if (v < 0 || v > 1024)
                return kvd_cfg_fail(err, errlen, "%s: %lld is not a CUDA ordinal (expected 0 to 1024)", key, v);
        return 0;
}

int kvd_cfg_add_device(struct kvd_pool_spec *s, long long v, const char *key, char *err, size_t errlen)
{
        if (kvd_cfg_check_device(v, key, err, errlen))
                return -EINVAL;
        for (uint32_t i = 0; i < s->num_devices; i++)
                if (s->devices[i] == (int)v)
                        return kvd_cfg_fail(err, errlen, "%s: device %lld is listed twice (one pool per device)", key, v);
        if (s->num_devices >= KVD_MAX_DEVICES)
                return kvd_cfg_fail(err, errlen, "%s: more than %u devices", key, KVD_MAX_DEVICES);
        s->devices[s->num_devices++] = (int)v;
        return 0;
}

/* "0:1:3", the --pool form of "devices" (',' separates the --pool keys). */
static int parse_devices_arg(struct kvd_pool_spec *s, const char *v, char *err, size_t errlen)
{
        const char *p = v;

        s->num_devices = 0;
        for (;;) {
                char     *end;
                long long d;

                errno = 0;
                d = strtoll(p, &end, 10);
                if (end == p || errno || (*end && *end != ':'))
                        return kvd_cfg_fail(err, errlen,
                                            "--pool devices: expected CUDA ordinals separated by ':' (e.g. devices=0:1), got \"%s\"", v);
                if (kvd_cfg_add_device(s, d, "--pool devices", err, errlen))
                        return -EINVAL;
                if (!*end)
                        return 0;
                p = end + 1;
        }
}

/* Pools a spec expands into: tp_size, else its devices, else 1 (itself). */
uint32_t kvd_cfg_expanded_count(const struct kvd_pool_spec *s)
{
        return s->tp_size ? s->tp_size : s->num_devices ? s->num_devices : 1;
}

/* The name of expanded pool k of s: "<name>.tp<k>" for rank k (a worker of
 * rank r computes it), "<name>.dev<d>" for device d of a spec with devices
 * only. */
static void expanded_name(const struct kvd_pool_spec *s, uint32_t k, char *buf, size_t len)
{
        if (s->tp_size)
                snprintf(buf, len, "%s.tp%u", s->name, k);
        else
                snprintf(buf, len, "%s.dev%d", s->name, s->devices[k]);
}

/* With tp_size and JSON scales, the file needs a rank per pool.  Read here so
 * the error names tp_size; a file that cannot be read or parsed is left to
 * the scales loader (--check-config, pool creation), which says what is
 * wrong with it. */
static int check_json_ranks(const struct kvd_pool_spec *s, const char *where, char *err, size_t errlen)
{
        const cJSON *src, *path, *sf;
        cJSON       *root = NULL;
        char         e[256];
        int          n, r = 0;

        if (!s->tp_size || !s->scales_cfg)
                return 0;
        src = cJSON_GetObjectItemCaseSensitive(s->scales_cfg, "source");
        path = cJSON_GetObjectItemCaseSensitive(s->scales_cfg, "path");
        if (!cJSON_IsString(src) || strcmp(src->valuestring, "json") || !cJSON_IsString(path) ||
            kvd_sc_read_json(path->valuestring, &root, e, sizeof(e)))
                return 0;
        sf = cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(root, "kv_cache"), "scaling_factor");
        n = cJSON_IsObject(sf) ? cJSON_GetArraySize(sf) : -1;
        if (n >= 0 && (uint32_t)n < s->tp_size)
                r = kvd_cfg_fail(err, errlen,
                                 "%s.tp_size: %u ranks, but the scaling-factor file %s has %d (kv_cache.scaling_factor "
                                 "needs ranks \"0\"..\"%u\": the pool of rank r takes the factors of rank r)",
                                 where, s->tp_size, path->valuestring, n, s->tp_size - 1);
        cJSON_Delete(root);
        return r;
}

int kvd_cfg_check_multi(const struct kvd_pool_spec *s, int has_device, const char *where, char *err, size_t errlen)
{
        char name[128];

        if (!s->tp_size && !s->num_devices)
                return 0;
        if (has_device)
                return kvd_cfg_fail(err, errlen, "%s.device: not allowed beside %s; list the devices as \"devices\"",
                                    where, s->tp_size ? "tp_size" : "devices");
        if (s->tp_size && s->num_devices && s->num_devices != s->tp_size)
                return kvd_cfg_fail(err, errlen, "%s.devices: %u device%s for tp_size %u (expected one device per rank)",
                                    where, s->num_devices, s->num_devices == 1 ? "" : "s", s->tp_size);
        if (s->tp_size && s->geom.kv_heads % s->tp_size)
                return kvd_cfg_fail(err, errlen,
                                    "%s.kv_heads: %u is not divisible by tp_size %u (each rank's pool takes kv_heads/tp_size heads)",
                                    where, s->geom.kv_heads, s->tp_size);
        if (s->tp_size && s->scales_cfg && cJSON_GetObjectItemCaseSensitive(s->scales_cfg, "tp_rank"))
                return kvd_cfg_fail(err, errlen,
                                    "%s.scales.tp_rank: not allowed with tp_size (pool %s.tp<r> takes the factors of rank r)",
                                    where, s->name);
        for (uint32_t k = 0; k < kvd_cfg_expanded_count(s); k++) {
                expanded_name(s, k, name, sizeof(name));
                if (strlen(name) >= KV_NAME_LEN)
                        return kvd_cfg_fail(err, errlen,
                                            "%s.name: \"%s\" is too long for %s: its pools are named like \"%s\" (at most %u characters)",
                                            where, s->name, s->tp_size ? "tp_size" : "devices", name, KV_NAME_LEN - 1);
        }
        return check_json_ranks(s, where, err, errlen);
}

/* Expands pool i of c into out[*k..]: copies for a plain spec, one spec per
 * rank or device otherwise (see config.h).  Each gets its own scales_cfg. */
int kvd_cfg_expand_one(const struct kvd_pool_spec *s, const char *where, struct kvd_pool_spec *out, uint32_t *k,
                       char *err, size_t errlen)
{
        uint32_t n = kvd_cfg_expanded_count(s);
        int      multi = s->tp_size || s->num_devices;

        for (uint32_t r = 0; r < n; r++) {
                struct kvd_pool_spec *e = &out[*k];
                char                  w[320];

                *e = *s;
                e->scales_cfg = NULL;
                if (s->scales_cfg && !(e->scales_cfg = cJSON_Duplicate(s->scales_cfg, 1)))
                        return -ENOMEM;
                ++*k;
                if (!multi)
                        return 0;
                e->num_devices = 0;
                memset(e->devices, 0, sizeof(e->devices));
                snprintf(e->spec_name, sizeof(e->spec_name), "%s", s->name);
                expanded_name(s, r, w, sizeof(w));
                if (strlen(w) >= sizeof(e->name)) /* kvd_cfg_check_multi said so already */
                        return kvd_cfg_fail(err, errlen, "%s.name: \"%s\" is too long", where, w);
                memcpy(e->name, w, strlen(w) + 1);
                e->device = s->num_devices ? s->devices[r] : (int)r;
                if (s->tp_size) {
                        const cJSON *src = e->scales_cfg ? cJSON_GetObjectItemCaseSensitive(e->scales_cfg, "source") : NULL;

                        e->tp_rank = r;
                        e->geom.kv_heads = s->geom.kv_heads / s->tp_size;
                        /* JSON factors are per rank; the other sources are shared. */
                        if (cJSON_IsString(src) && !strcmp(src->valuestring, "json") &&
                            !cJSON_AddNumberToObject(e->scales_cfg, "tp_rank", r))
                                return -ENOMEM;
                }
                snprintf(w, sizeof(w), "%s (pool %s)", where, e->name);
                if (kvd_cfg_check_spec(e, w, err, errlen))
                        return -EINVAL;
        }
        return 0;
}

/* The keys of --pool, in the order the unknown-key message lists them. */
static const char *const pool_keys[] = { "name",     "dtype",    "layers",  "kv_heads", "head_dim", "page_size",
                                         "capacity", "backend",  "device",  "tp_size",  "devices" };

int kvd_config_parse_pool_arg(const char *arg, struct kvd_pool_spec *ret, char *err, size_t errlen)
{
        struct kvd_pool_spec s;
        char                 buf[1024], where[96], e[256];
        char                *save = NULL, *tok;
        int                  r = 0, has_device = 0;
        uint32_t             seen = 0;

        kvd_cfg_spec_defaults(&s);
        if (!arg || strlen(arg) >= sizeof(buf))
                return kvd_cfg_fail(err, errlen, "--pool: expected name=…,dtype=…,layers=…,kv_heads=…,head_dim=…,page_size=…,capacity=…");
        strcpy(buf, arg);
        snprintf(where, sizeof(where), "--pool");
        for (tok = strtok_r(buf, ",", &save); tok && !r; tok = strtok_r(NULL, ",", &save)) {
                char     *eq = strchr(tok, '=');
                const char *k = tok, *v;
                uint32_t  u = 0;

                if (!eq)
                        return kvd_cfg_fail(err, errlen, "--pool \"%s\": \"%s\" is not key=value", arg, tok);
                *eq = 0;
                v = eq + 1;
                /* a key given twice is a mistake, not "the last one wins" */
                for (unsigned i = 0; i < sizeof(pool_keys) / sizeof(pool_keys[0]); i++) {
                        if (strcmp(k, pool_keys[i]) != 0)
                                continue;
                        if (seen & (1u << i))
                                return kvd_cfg_fail(err, errlen, "--pool \"%s\": key \"%s\" given twice", arg, k);
                        seen |= 1u << i;
                }
                if (strcmp(k, "name") == 0) {
                        if ((r = kvd_cfg_check_name(v, "--pool name", err, errlen)))
                                return r;
                        strcpy(s.name, v);
                        snprintf(where, sizeof(where), "--pool '%s'", s.name);
                } else if (strcmp(k, "dtype") == 0) {
                        if (kvd_cfg_check_dtype(v, &s.geom.dtype, "--pool dtype", err, errlen))
                                return -EINVAL;
                } else if (!strcmp(k, "layers") || !strcmp(k, "kv_heads") || !strcmp(k, "head_dim") ||
                           !strcmp(k, "page_size") || !strcmp(k, "device")) {
                        if (parse_u32_str(v, &u))
                                return kvd_cfg_fail(err, errlen, "--pool %s: expected a non-negative integer, got \"%s\"", k, v);
                        if (!strcmp(k, "layers"))
                                s.geom.num_layers = u;
                        else if (!strcmp(k, "kv_heads"))
                                s.geom.kv_heads = u;
                        else if (!strcmp(k, "head_dim"))
                                s.geom.head_dim = u;
                        else if (!strcmp(k, "page_size"))
                                s.geom.page_size = u;
                        else if (kvd_cfg_check_device(u, "--pool device", err, errlen))
                                return -EINVAL;
                        else
                                s.device = (int)u, has_device = 1;
                } else if (strcmp(k, "tp_size") == 0) {
                        if (parse_u32_str(v, &u))
                                return kvd_cfg_fail(err, errlen, "--pool tp_size: expected 1 to %u, got \"%s\"",
                                                    KVD_MAX_DEVICES, v);
                        if ((r = kvd_cfg_set_tp_size(&s, u, "--pool tp_size", err, errlen)))
                                return r;
                } else if (strcmp(k, "devices") == 0) {
                        if ((r = parse_devices_arg(&s, v, err, errlen)))
                                return r;
                } else if (strcmp(k, "capacity") == 0) {
                        if (kvd_config_parse_capacity(v, &s.capacity_bytes, &s.capacity_fraction, e, sizeof(e)))
                                return kvd_cfg_fail(err, errlen, "--pool %s", e);
                } else if (strcmp(k, "backend") == 0) {
                        if (kvd_cfg_check_backend(v, "--pool backend", err, errlen))
                                return -EINVAL;
                        strcpy(s.backend, v);
                } else {
                        char list[160] = "";
                        for (unsigned i = 0; i < sizeof(pool_keys) / sizeof(pool_keys[0]); i++)
                                snprintf(list + strlen(list), sizeof(list) - strlen(list), "%s%s", i ? ", " : "",
                                         pool_keys[i]);
                        return kvd_cfg_fail(err, errlen, "--pool: unknown key \"%s\" (expected %s)", k, list);
                }
        }
        if ((r = kvd_cfg_check_spec(&s, where, err, errlen)) ||
            (r = kvd_cfg_check_multi(&s, has_device, where, err, errlen)))
                return r;
        *ret = s;
        return 0;
}
