/* config.c - kvpoold's command line, precedence and defaults, the config
 * check and print (see config.h); pool specs and capacities are in
 * config_pool.c, the JSON file is read by config_file.c. */
#include <errno.h>
#include <grp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config_int.h"
#include "json_strict.h"
#include "metrics.h"
#include "kv_proto.h"
#include "kv_url.h"
#include "log.h"
#include "kv_layout.h"
#include "scales.h"
#include "scales_int.h"

static int check_url(const char *what, const char *u, char *err, size_t errlen);

/* What a message calls a setting: the option when the command line gave it,
 * "FILE: key" when the config file did, else dflt (the environment or the
 * built-in default). */
static void setting_name(char *buf, size_t cap, int in_cli, int in_file, const char *file, const char *opt,
                         const char *key, const char *dflt)
{
        if (in_cli)
                snprintf(buf, cap, "%s", opt);
        else if (in_file)
                snprintf(buf, cap, "%s: %s", file, key);
        else
                snprintf(buf, cap, "%s", dflt);
}

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

/* The event socket's default (kv_default_events_url: events.sock beside the
 * request socket), malloc'ed; NULL for a socket that is not ipc:// (events
 * are then off unless --events names one) or without memory. */
static char *default_events_url(const char *socket_url)
{
        const size_t cap = strlen(socket_url) + sizeof("events.sock");
        char        *out = malloc(cap);

        if (out && kv_default_events_url(socket_url, out, cap) < 0) {
                free(out);
                out = NULL;
        }
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
                total += kvd_cfg_expanded_count(&c->pools[i]);
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
                r = kvd_cfg_expand_one(&c->pools[i], where, out, &k, err, errlen);
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

                /* checked with the other addresses below (check_url) */
                if ((r = dup_str(&c.socket_url, sock ? sock : "")))
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
        /* Addresses are checked here, so that --check-config refuses what
         * nng cannot listen on, and a start fails before any pool is made;
         * a setting from the file is named with the file. */
        {
                char ws[300], we[300], wm[300];

                setting_name(ws, sizeof(ws), cli.has_socket, file.has_socket, c.config_path, "--socket", "socket",
                             "KVPOOL_SOCKET");
                setting_name(we, sizeof(we), cli.has_events, file.has_events, c.config_path, "--events", "events",
                             "events (beside the socket)");
                setting_name(wm, sizeof(wm), cli.has_metrics, file.has_metrics, c.config_path, "--metrics",
                             "metrics", "metrics (the default)");
                if ((r = check_url(ws, c.socket_url, err, errlen)) ||
                    (c.events_url && (r = check_url(we, c.events_url, err, errlen))))
                        goto out;
                if (c.events_url && strcmp(c.events_url, c.socket_url) == 0) {
                        r = kvd_cfg_fail(err, errlen, "%s: \"%s\" is the control socket's address too (%s)", we,
                                         c.events_url, ws);
                        goto out;
                }
                if (c.metrics_addr && (r = kvd_metrics_check_addr(c.metrics_addr, err, errlen))) {
                        char e[300];

                        /* "metrics address ...": the setting's name says metrics */
                        snprintf(e, sizeof(e), "%s", strncmp(err, "metrics ", 8) == 0 ? err + 8 : err);
                        r = kvd_cfg_fail(err, errlen, "%s: %s", wm, e);
                        goto out;
                }
        }
        if (cli.has_log_level || file.has_log_level)
                c.log_level = cli.has_log_level ? cli.log_level : file.log_level;
        {
                const char *g = cli.has_group ? cli.group : file.has_group ? file.group : NULL;
                if (g && *g) {
                        struct group *gr = getgrnam(g);
                        if (!gr) {
                                char wg[300];

                                setting_name(wg, sizeof(wg), cli.has_group, file.has_group, c.config_path, "--group",
                                             "group", "group");
                                r = kvd_cfg_fail(err, errlen, "%s: no such group \"%s\"", wg, g);
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

/* A URL kvpoold can listen on (kv_url_check, shared with kvpoolctl) and
 * STATUS can echo; what names the setting in the message. */
static int check_url(const char *what, const char *u, char *err, size_t errlen)
{
        char why[512];

        /* STATUS echoes the URLs as JSON strings: UTF-8 only */
        if (kvd_utf8_bad(u, strlen(u)) >= 0)
                return kvd_cfg_fail(err, errlen, "%s: the URL is not valid UTF-8", what);
        if (kv_url_check(u, why, sizeof(why)))
                return kvd_cfg_fail(err, errlen, "%s: %s", what, why);
        return 0;
}

int kvd_config_load_scales(const struct kvd_config *c, FILE *f, struct kvd_scales **ret, char *err, size_t errlen)
{
        struct kvd_scales *all = calloc(c->num_pools ? c->num_pools : 1, sizeof(*all));
        uint32_t           n = 0;
        int                r = 0;

        if (!all) {
                snprintf(err, errlen, "scales: out of memory");
                return -ENOMEM;
        }
        for (; n < c->num_pools; n++) {
                const struct kvd_pool_spec *s = &c->pools[n];
                struct kvd_scales          *sc = &all[n];
                char                        e[512];

                r = kvd_scales_load(s->scales_cfg, s->geom.num_layers, kvc_dtype_name(s->geom.dtype), sc, e, sizeof(e));
                if (r) {
                        snprintf(err, errlen, "pool %s: scales: %s", s->name, e);
                        break;
                }
                if (f)
                        fprintf(f, "pool %s scales: %s%s%s, k %g..%g, v %g..%g over %u layers%s\n", s->name,
                                sc->source, sc->path[0] ? " " : "", sc->path, sc->k_min, sc->k_max, sc->v_min, sc->v_max,
                                sc->num_layers, sc->warn_unscaled ? " (fp8 without calibrated scales: configure \"scales\")" : "");
        }
        if (r || !ret) {
                for (uint32_t i = 0; i < n; i++)
                        kvd_scales_fini(&all[i]);
                free(all);
                return r;
        }
        *ret = all;
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

unsigned long kvd_env_number(const char *name, unsigned long lo, unsigned long hi, unsigned long dflt,
                             const char *what)
{
        const char   *v = getenv(name);
        unsigned long n = 0;
        int           ok;

        if (!v)
                return dflt;
        /* at most 9 digits: no overflow, and every limit here is below 1e9 */
        ok = v[0] != '\0' && strlen(v) <= 9;
        for (const char *c = v; ok && *c; c++) {
                ok = *c >= '0' && *c <= '9';
                n = n * 10 + (unsigned long)(*c - '0');
        }
        if (ok && n >= lo && n <= hi)
                return n;
        kvd_warn("%s='%s' is not a number of %s from %lu to %lu; using %lu", name, v, what, lo, hi, dflt);
        return dflt;
}
