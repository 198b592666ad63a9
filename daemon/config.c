/* config.c - kvpoold's command line, precedence and defaults, pool specs and
 * capacities (see config.h); the JSON file is read by config_file.c. */
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <cjson/cJSON.h>
#include "config_int.h"
#include "log.h"
#include "kv_layout.h"
#include "scales.h"
#include "scales_int.h"

int kvd_cfg_fail(char *err, size_t errlen, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return -EINVAL;
}

const char *kvd_config_usage(void)
{
        return
"Usage: kvpoold [OPTIONS]\n"
"Serve attention KV-cache pools to worker processes.\n"
"\n"
"  --config FILE        JSON config (keys: socket, events, metrics, group,\n"
"                       log_level, pools)\n"
"  --pool SPEC          add a pool: name=N,dtype=D,layers=L,kv_heads=H,head_dim=E,\n"
"                       page_size=P,capacity=C[,backend=auto|host|cuda][,device=N]\n"
"                       [,tp_size=T][,devices=0:1:...]\n"
"                       dtype: bf16 fp16 fp8_e4m3 fp8_e5m2 fp4_e2m1; capacity: bytes\n"
"                       (8GiB, 512MiB, 1G) or a fraction of free GPU memory (0.9, 90%)\n"
"                       per pool; tp_size=T: one pool per tensor-parallel rank r,\n"
"                       NAME.tp<r> with kv_heads/T heads on device r (or devices[r]);\n"
"                       devices alone: one pool NAME.dev<d> per device d\n"
"  --socket URL         request socket (default $KVPOOL_SOCKET, else\n"
"                       " KVC_DEFAULT_SOCKET ")\n"
"  --events URL         event PUB socket (default: events.sock beside the\n"
"                       request socket; \"none\" = off)\n"
"  --metrics ADDR       Prometheus /metrics address (default " KVD_DEFAULT_METRICS ";\n"
"                       \"none\" = off)\n"
"  --group NAME         shared memory and socket mode 0660 with this group\n"
"  --log-level LEVEL    error, warning, info (default) or debug\n"
"  --check-config       validate the configuration, print the pools, exit\n"
"  --help, --version\n"
"\n"
"Without any pool, a built-in \"default\" pool is served (fp8_e4m3, 32 layers,\n"
"8 kv heads, head_dim 128, page_size 16, 256MiB, backend auto).\n";
}

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
                if (!isalnum(c) && c != '_' && c != '-' && c != '.')
                        return kvd_cfg_fail(err, errlen,
                                    "%s: \"%s\" has a '%c': expected letters, digits, '_', '-' and '.'",
                                    where, name, c);
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

int kvd_cfg_add_device(struct kvd_pool_spec *s, long long v, const char *key, char *err, size_t errlen)
{
        if (v < 0 || v > 1024)
                return kvd_cfg_fail(err, errlen, "%s: %lld is not a CUDA ordinal (expected 0 to 1024)", key, v);
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
static uint32_t expanded_count(const struct kvd_pool_spec *s)
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
        for (uint32_t k = 0; k < expanded_count(s); k++) {
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
static int expand_one(const struct kvd_pool_spec *s, const char *where, struct kvd_pool_spec *out, uint32_t *k,
                      char *err, size_t errlen)
{
        uint32_t n = expanded_count(s);
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

int kvd_config_parse_pool_arg(const char *arg, struct kvd_pool_spec *ret, char *err, size_t errlen)
{
        struct kvd_pool_spec s;
        char                 buf[1024], where[96], e[256];
        char                *save = NULL, *tok;
        int                  r = 0, has_device = 0;

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
                        else if (u > 1024)
                                return kvd_cfg_fail(err, errlen, "--pool device: %u is not a plausible CUDA ordinal", u);
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
                        return kvd_cfg_fail(err, errlen,
                                    "--pool: unknown key \"%s\" (expected name, dtype, layers, kv_heads, head_dim, page_size, capacity, backend, device, tp_size, devices)",
                                    k);
                }
        }
        if ((r = kvd_cfg_check_spec(&s, where, err, errlen)) ||
            (r = kvd_cfg_check_multi(&s, has_device, where, err, errlen)))
                return r;
        *ret = s;
        return 0;
}

/* ---- command line -------------------------------------------------------- */

void kvd_config_fini(struct kvd_config *c)
{
        if (!c)
                return;
        for (uint32_t i = 0; i < c->num_pools; i++)
                kvd_pool_spec_fini(&c->pools[i]);
        free(c->pools);
        free(c->config_path);
        free(c->socket_url);
        free(c->events_url);
        free(c->metrics_addr);
        free(c->group);
        memset(c, 0, sizeof(*c));
}

/* "none" and "" switch an optional endpoint off. */
static int is_off(const char *v)
{
        return !v || !*v || strcmp(v, "none") == 0 || strcmp(v, "off") == 0;
}

/* The event socket's default: events.sock beside the request socket (the
 * same folder; kvpoolctl derives it the same way).  Only ipc:// sockets get
 * a default; on other transports events are off unless --events names one. */
static char *default_events_url(const char *socket_url)
{
        const char *path, *base;
        char       *out;
        size_t      dirlen;

        if (strncmp(socket_url, "ipc://", 6) != 0)
                return NULL;
        path = socket_url + 6;
        base = strrchr(path, '/');
        dirlen = base ? (size_t)(base - path) + 1 : 0;
        if (!(out = malloc(6 + dirlen + sizeof("events.sock"))))
                return NULL;
        sprintf(out, "ipc://%.*sevents.sock", (int)dirlen, path);
        return out;
}

/* Where pool i came from, for messages: "FILE: pools[i]" or "--pool #k". */
static void where_pool(const struct kvd_config *c, uint32_t nfile, uint32_t i, char *buf, size_t len)
{
        if (i < nfile)
                snprintf(buf, len, "%s: pools[%u]", c->config_path, i);
        else
                snprintf(buf, len, "--pool #%u", i - nfile + 1);
}

/* Replaces c's pools by their expansion over tp_size / devices; origin[i]
 * is the configured pool that expanded pool i came from. */
static int expand_pools(struct kvd_config *c, uint32_t nfile, uint32_t *origin, char *err, size_t errlen)
{
        struct kvd_pool_spec *out;
        uint32_t              total = 0, k = 0;
        int                   r = 0;

        for (uint32_t i = 0; i < c->num_pools; i++)
                total += expanded_count(&c->pools[i]);
        if (total > KVD_MAX_POOLS)
                return kvd_cfg_fail(err, errlen, "%u pools after expanding tp_size and devices, at most %u are supported",
                                    total, KVD_MAX_POOLS);
        if (total == c->num_pools) {
                int multi = 0;

                for (uint32_t i = 0; i < c->num_pools; i++) {
                        origin[i] = i;
                        multi |= c->pools[i].tp_size || c->pools[i].num_devices;
                }
                if (!multi)
                        return 0;
        }
        if (!(out = calloc(total, sizeof(*out))))
                return -ENOMEM;
        for (uint32_t i = 0; i < c->num_pools && !r; i++) {
                char     where[160];
                uint32_t k0 = k;

                where_pool(c, nfile, i, where, sizeof(where));
                r = expand_one(&c->pools[i], where, out, &k, err, errlen);
                for (uint32_t j = k0; j < k; j++)
                        origin[j] = i;
        }
        if (r) {
                for (uint32_t j = 0; j < k; j++)
                        kvd_pool_spec_fini(&out[j]);
                free(out);
                return r;
        }
        for (uint32_t i = 0; i < c->num_pools; i++)
                kvd_pool_spec_fini(&c->pools[i]);
        free(c->pools);
        c->pools = out;
        c->num_pools = total;
        return 0;
}

static int opt_value(int argc, char **argv, int *i, const char *name, const char **ret, char *err, size_t errlen)
{
        const char *a = argv[*i];
        size_t      n = strlen(name);

        if (a[n] == '=') {
                *ret = a + n + 1;
                return 0;
        }
        if (*i + 1 >= argc)
                return kvd_cfg_fail(err, errlen, "%s: missing value (see --help)", name);
        *ret = argv[++*i];
        return 0;
}

static int dup_str(char **dst, const char *v)
{
        free(*dst);
        *dst = v ? strdup(v) : NULL;
        return v && !*dst ? -ENOMEM : 0;
}

int kvd_config_parse(int argc, char **argv, struct kvd_config *ret, char *err, size_t errlen)
{
        static const char *valued[] = { "--config", "--pool", "--socket", "--events", "--metrics",
                                        "--group", "--log-level" };
        struct kvd_config    c;
        struct kvd_cfg_scalars file = { 0 }, cli = { 0 };
        struct kvd_pool_spec *cli_pools = NULL, *all;
        uint32_t             ncli = 0, nfile = 0, origin[KVD_MAX_POOLS];
        int                  r = 0;

        memset(&c, 0, sizeof(c));
        c.log_level = KVD_LOG_INFO;
        if (argc > 0 && !(cli_pools = calloc((size_t)argc, sizeof(*cli_pools))))
                return -ENOMEM;
        for (int i = 1; i < argc && !r; i++) {
                const char *a = argv[i], *v = NULL;
                const char *opt = NULL;

                if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
                        c.help = 1;
                        continue;
                }
                if (!strcmp(a, "--version") || !strcmp(a, "-V")) {
                        c.version = 1;
                        continue;
                }
                if (!strcmp(a, "--check-config")) {
                        c.check_config = 1;
                        continue;
                }
                for (size_t k = 0; k < sizeof(valued) / sizeof(valued[0]); k++) {
                        size_t n = strlen(valued[k]);
                        if (!strncmp(a, valued[k], n) && (a[n] == 0 || a[n] == '=')) {
                                opt = valued[k];
                                break;
                        }
                }
                if (!opt) {
                        r = kvd_cfg_fail(err, errlen, "unknown argument \"%s\" (see --help)", a);
                        break;
                }
                if ((r = opt_value(argc, argv, &i, opt, &v, err, errlen)))
                        break;
                if (!strcmp(opt, "--config")) {
                        r = dup_str(&c.config_path, v);
                } else if (!strcmp(opt, "--pool")) {
                        if (ncli >= KVD_MAX_POOLS)
                                r = kvd_cfg_fail(err, errlen, "--pool: at most %u pools are supported", KVD_MAX_POOLS);
                        else if (!(r = kvd_config_parse_pool_arg(v, &cli_pools[ncli], err, errlen)))
                                ncli++;
                } else if (!strcmp(opt, "--socket")) {
                        r = dup_str(&cli.socket, v);
                        cli.has_socket = 1;
                } else if (!strcmp(opt, "--events")) {
                        r = dup_str(&cli.events, v);
                        cli.has_events = 1;
                } else if (!strcmp(opt, "--metrics")) {
                        r = dup_str(&cli.metrics, v);
                        cli.has_metrics = 1;
                } else if (!strcmp(opt, "--group")) {
                        r = dup_str(&cli.group, v);
                        cli.has_group = 1;
                } else if (!strcmp(opt, "--log-level")) {
                        if (kvd_log_parse_level(v, &cli.log_level))
                                r = kvd_cfg_fail(err, errlen, "--log-level: expected error, warning, info or debug, got \"%s\"", v);
                        cli.has_log_level = 1;
                }
        }
        if (r || c.help || c.version)
                goto out;

        if (c.config_path && (r = kvd_cfg_load_file(c.config_path, &file, &c.pools, &c.num_pools, err, errlen)))
                goto out;

        /* Scalars: command line > file > environment > built-in default. */
        {
                const char *env = getenv("KVPOOL_SOCKET");
                const char *sock = cli.has_socket ? cli.socket : file.has_socket ? file.socket
                                 : (env && *env) ? env : KVC_DEFAULT_SOCKET;
                const char *src = cli.has_socket ? "--socket" : file.has_socket ? "socket" : "KVPOOL_SOCKET";

                if (!sock || !*sock || !strstr(sock, "://")) {
                        r = kvd_cfg_fail(err, errlen, "%s: expected a URL like ipc:///run/kvpool/kvpool.sock, got \"%s\"",
                                 src, sock ? sock : "");
                        goto out;
                }
                if ((r = dup_str(&c.socket_url, sock)))
                        goto out;
        }
        if (cli.has_events || file.has_events) {
                const char *ev = cli.has_events ? cli.events : file.events;
                if (!is_off(ev) && (r = dup_str(&c.events_url, ev)))
                        goto out;
        } else {
                c.events_url = default_events_url(c.socket_url);
                if (!c.events_url && strncmp(c.socket_url, "ipc://", 6) == 0) {
                        r = -ENOMEM;
                        goto out;
                }
        }
        {
                const char *m = cli.has_metrics ? cli.metrics : file.has_metrics ? file.metrics
                                                                                : KVD_DEFAULT_METRICS;
                if (!is_off(m) && (r = dup_str(&c.metrics_addr, m)))
                        goto out;
        }
        if (cli.has_log_level || file.has_log_level)
                c.log_level = cli.has_log_level ? cli.log_level : file.log_level;
        {
                const char *g = cli.has_group ? cli.group : file.has_group ? file.group : NULL;
                if (g && *g) {
                        struct group *gr = getgrnam(g);
                        if (!gr) {
                                r = kvd_cfg_fail(err, errlen, "%s: no such group \"%s\"", cli.has_group ? "--group" : "group", g);
                                goto out;
                        }
                        c.gid = gr->gr_gid;
                        if ((r = dup_str(&c.group, g)))
                                goto out;
                }
        }

        /* Pools: the file's, then the command line's. */
        if (c.num_pools + ncli > KVD_MAX_POOLS) {
                r = kvd_cfg_fail(err, errlen, "%u pools configured, at most %u are supported", c.num_pools + ncli, KVD_MAX_POOLS);
                goto out;
        }
        nfile = c.num_pools;
        if (ncli) {
                all = realloc(c.pools, (c.num_pools + ncli) * sizeof(*all));
                if (!all) {
                        r = -ENOMEM;
                        goto out;
                }
                memcpy(all + c.num_pools, cli_pools, ncli * sizeof(*all));
                c.pools = all;
                c.num_pools += ncli;
                ncli = 0; /* now owned by c */
        }
        if (c.num_pools == 0) {
                if (!(c.pools = calloc(1, sizeof(*c.pools)))) {
                        r = -ENOMEM;
                        goto out;
                }
                kvd_config_default_pool(&c.pools[0]);
                c.num_pools = 1;
                c.default_pool = 1;
        }
        if ((r = expand_pools(&c, nfile, origin, err, errlen)))
                goto out;
        for (uint32_t i = 0; i < c.num_pools; i++) {
                c.pools[i].has_group = c.group != NULL;
                c.pools[i].group = c.gid;
                for (uint32_t j = 0; j < i; j++) {
                        if (strcmp(c.pools[i].name, c.pools[j].name) == 0) {
                                char a[160], b[160];

                                where_pool(&c, nfile, origin[j], a, sizeof(a));
                                where_pool(&c, nfile, origin[i], b, sizeof(b));
                                r = kvd_cfg_fail(err, errlen, "pool name \"%s\" is used twice: %s and %s",
                                         c.pools[i].name, a, b);
                                goto out;
                        }
                }
        }
out:
        for (uint32_t i = 0; i < ncli; i++)
                kvd_pool_spec_fini(&cli_pools[i]);
        free(cli_pools);
        free(file.socket); free(file.events); free(file.metrics); free(file.group);
        free(cli.socket); free(cli.events); free(cli.metrics); free(cli.group);
        if (r == -ENOMEM && err && errlen)
                snprintf(err, errlen, "out of memory while reading the configuration");
        if (r) {
                kvd_config_fini(&c);
                return r;
        }
        *ret = c;
        return 0;
}

/* ---- check and print ----------------------------------------------------- */

int kvd_config_check_scales(const struct kvd_config *c, FILE *f, char *err, size_t errlen)
{
        for (uint32_t i = 0; i < c->num_pools; i++) {
                const struct kvd_pool_spec *s = &c->pools[i];
                struct kvd_scales           sc;
                char                        e[512];
                int                         r;

                r = kvd_scales_load(s->scales_cfg, s->geom.num_layers, kvc_dtype_name(s->geom.dtype),
                                    &sc, e, sizeof(e));
                if (r) {
                        snprintf(err, errlen, "pool %s: scales: %s", s->name, e);
                        return r;
                }
                if (f)
                        fprintf(f, "pool %s scales: %s%s%s, k %g..%g, v %g..%g over %u layers%s\n", s->name,
                                sc.source, sc.path[0] ? " " : "", sc.path, sc.k_min, sc.k_max, sc.v_min, sc.v_max,
                                sc.num_layers, sc.warn_unscaled && (s->geom.dtype == KVC_DTYPE_FP8_E4M3 ||
                                                                    s->geom.dtype == KVC_DTYPE_FP8_E5M2)
                                                       ? " (UNSCALED fp8: configure \"scales\")" : "");
                kvd_scales_fini(&sc);
        }
        return 0;
}

void kvd_config_print(const struct kvd_config *c, FILE *f)
{
        fprintf(f, "socket  %s\n", c->socket_url);
        fprintf(f, "events  %s\n", c->events_url ? c->events_url : "off");
        fprintf(f, "metrics %s\n", c->metrics_addr ? c->metrics_addr : "off");
        if (c->group)
                fprintf(f, "group   %s (gid %u, mode 0660)\n", c->group, (unsigned)c->gid);
        for (uint32_t i = 0; i < c->num_pools; i++) {
                const struct kvd_pool_spec *s = &c->pools[i];
                struct kv_layout            L;

                fprintf(f, "pool %s%s: %s, %u layers x %u kv_heads x %u head_dim, page_size %u, backend %s",
                        s->name, c->default_pool ? " (built-in default)" : "", kvc_dtype_name(s->geom.dtype),
                        s->geom.num_layers, s->geom.kv_heads, s->geom.head_dim, s->geom.page_size, s->backend);
                if (strcmp(s->backend, "host"))
                        fprintf(f, " device %d", s->device);
                if (s->tp_size)
                        fprintf(f, ", tensor-parallel rank %u of %u of %s", s->tp_rank, s->tp_size, s->spec_name);
                else if (s->spec_name[0])
                        fprintf(f, ", one of %s's per-device pools", s->spec_name);
                if (s->capacity_fraction > 0) {
                        fprintf(f, ", capacity %.1f%% of free GPU memory (sized at start)\n",
                                s->capacity_fraction * 100.0);
                } else if (kv_layout_fit(&s->geom, s->capacity_bytes, &L) == 0) {
                        fprintf(f, ", capacity %llu bytes: %u pages, %llu tokens, %llu bytes allocated\n",
                                (unsigned long long)s->capacity_bytes, L.num_pages,
                                (unsigned long long)kv_layout_tokens(&L), (unsigned long long)L.alloc_bytes);
                } else {
                        fprintf(f, ", capacity %llu bytes: TOO SMALL for one page\n",
                                (unsigned long long)s->capacity_bytes);
                }
        }
}
