/* kvpoolctl.c - the operator CLI of kvpool, just another libkvclient client.
 *
 *   kvpoolctl [--socket URL] [--events URL] status [--json]
 *   kvpoolctl [--socket URL] metrics
 *   kvpoolctl [--socket URL] [--events URL] events [--json] [--count N]
 *   kvpoolctl [--socket URL] reset-prefixes POOL
 *
 * Exit status: 0 success, 1 failure (daemon unreachable, request failed, a
 * status document that is not an object or lacks its pools or clients
 * array: what it has is still shown), 2 usage error.
 */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "ctl_events.h"
#include "kvclient.h"
#include "kv_proto.h"
#include "kv_url.h"

#ifndef KV_VERSION
#define KV_VERSION "unknown"
#endif

static const char usage_text[] =
        "usage: kvpoolctl [--socket URL] [--events URL] <command> [options]\n"
        "\n"
        "commands:\n"
        "  status [--json]            pools and clients (a table, or the daemon's JSON document)\n"
        "  metrics                    the Prometheus text exposition\n"
        "  events [--json] [--count N]\n"
        "                             follow the event stream (stored, evicted, reset, pressure, shutdown)\n"
        "  reset-prefixes POOL        drop every prefix-cache key of POOL (after a model change);\n"
        "                             pages in use stay with their holders\n"
        "  help                       this text\n"
        "\n"
        "options:\n"
        "  --socket URL   kvpoold's control socket (default: $KVPOOL_SOCKET, else "
        KVC_DEFAULT_SOCKET ")\n"
        "  --events URL   the event socket (default: events.sock beside the control socket)\n"
        "  -h, --help     this text\n"
        "  -V, --version  the version\n";

static int usage_error(const char *fmt, ...)
{
        va_list ap;

        fputs("kvpoolctl: ", stderr);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fputs("\n\n", stderr);
        fputs(usage_text, stderr);
        return 2;
}

int ctl_output_done(const char *who)
{
        /* errno names the cause only when this flush is what failed: an
         * earlier failed write (ferror) left it to be overwritten since */
        errno = 0;
        if (fflush(stdout) == 0 && !ferror(stdout))
                return 0;
        if (errno != 0)
                fprintf(stderr, "%s: cannot write the output: %s\n", who, strerror(errno));
        else
                fprintf(stderr, "%s: cannot write the output (a write to standard output failed)\n", who);
        return 1;
}

/* ---- a small column-aligned table ------------------------------------------ */

#define MAX_COLS 14
#define CELL_LEN 48

struct table {
        int    ncols, nrows;
        char (*cells)[MAX_COLS][CELL_LEN];
};

static int table_init(struct table *t, int ncols, int max_rows)
{
        t->ncols = ncols;
        t->nrows = 0;
        t->cells = calloc((size_t)max_rows, sizeof *t->cells);
        return t->cells ? 0 : -ENOMEM;
}

/* Appends a row of ncols strings. */
static void table_row(struct table *t, ...)
{
        va_list ap;

        va_start(ap, t);
        for (int i = 0; i < t->ncols; i++)
                snprintf(t->cells[t->nrows][i], CELL_LEN, "%s", va_arg(ap, const char *));
        va_end(ap);
        t->nrows++;
}

static void table_print(struct table *t, const char *indent)
{
        int w[MAX_COLS] = { 0 };

        for (int r = 0; r < t->nrows; r++)
                for (int i = 0; i < t->ncols; i++)
                        if ((int)strlen(t->cells[r][i]) > w[i])
                                w[i] = (int)strlen(t->cells[r][i]);
        for (int r = 0; r < t->nrows; r++) {
                fputs(indent, stdout);
                for (int i = 0; i < t->ncols; i++) {
                        if (i == t->ncols - 1)
                                printf("%s\n", t->cells[r][i]);
                        else
                                printf("%-*s  ", w[i], t->cells[r][i]);
                }
        }
        free(t->cells);
        t->cells = NULL;
}

/* ---- reading the status document -------------------------------------------- */

static double num(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

        return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static const char *str(const cJSON *o, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);

        return cJSON_IsString(v) && v->valuestring ? v->valuestring : "-";
}

/* Formats a count; "-" when the daemon did not report it. */
static const char *fmt_count(char *buf, size_t len, double v)
{
        if (isnan(v))
                snprintf(buf, len, "-");
        else
                snprintf(buf, len, "%.0f", v);
        return buf;
}

static const char *fmt_bytes(char *buf, size_t len, double v)
{
        static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
        int u = 0;

        if (isnan(v)) {
                snprintf(buf, len, "-");
                return buf;
        }
        while (v >= 1024.0 && u < 5) {
                v /= 1024.0;
                u++;
        }
        if (u == 0)
                snprintf(buf, len, "%.0f B", v);
        else
                snprintf(buf, len, "%.1f %s", v, units[u]);
        return buf;
}

static const char *fmt_range(char *buf, size_t len, double lo, double hi)
{
        if (isnan(lo) || isnan(hi))
                snprintf(buf, len, "-");
        else if (lo == hi)
                snprintf(buf, len, "%.4g", lo);
        else
                snprintf(buf, len, "%.4g..%.4g", lo, hi);
        return buf;
}

/* "-" for an uptime the daemon did not give, or not a count of seconds
 * that a long holds (converting one would be undefined). */
static const char *fmt_uptime(char *buf, size_t len, double s)
{
        long t;

        if (!(s >= 0 && s < 9e18)) { /* NaN fails both */
                snprintf(buf, len, "-");
                return buf;
        }
        t = (long)s;
        if (t >= 86400)
                snprintf(buf, len, "%ldd%ldh", t / 86400, t % 86400 / 3600);
        else if (t >= 3600)
                snprintf(buf, len, "%ldh%ldm", t / 3600, t % 3600 / 60);
        else if (t >= 60)
                snprintf(buf, len, "%ldm%lds", t / 60, t % 60);
        else
                snprintf(buf, len, "%lds", t);
        return buf;
}

/* A pool's device for sorting: CUDA ordinals first, host (-1, or no
 * number) after them. */
static double device_key(const cJSON *p)
{
        double d = num(p, "device");

        return isnan(d) || d < 0 || strcmp(str(p, "backend"), "host") == 0 ? 1e9 : d;
}

/* Pools grouped by device, then by name (so a tensor-parallel group's ranks
 * on one device stand together, and each device's pools in one block). */
static int by_device_then_name(const void *a, const void *b)
{
        const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
        double       dx = device_key(x), dy = device_key(y);

        if (dx != dy)
                return dx < dy ? -1 : 1;
        return strcmp(str(x, "name"), str(y, "name"));
}

static void print_pools(const cJSON *pools)
{
        struct table t1, t2;
        const cJSON *p, **order;
        int n = cJSON_GetArraySize(pools), k = 0;

        if (n == 0) {
                printf("pools: none\n");
                return;
        }
        order = calloc((size_t)n, sizeof *order);
        if (order == NULL || table_init(&t1, 13, n + 1) != 0 || table_init(&t2, 9, n + 1) != 0) {
                fprintf(stderr, "kvpoolctl: out of memory\n");
                free(order);
                return;
        }
        cJSON_ArrayForEach(p, pools)
                if (k < n)
                        order[k++] = p;
        qsort(order, (size_t)k, sizeof *order, by_device_then_name);
        table_row(&t1, "DEVICE", "POOL", "TP", "DTYPE", "BACKEND", "LAYERSxHEADSxDIM", "PAGE", "PAGES",
                  "FREE", "HELD", "CACHED", "TOKENS", "BYTES");
        table_row(&t2, "DEVICE", "POOL", "SCALES", "K SCALE", "V SCALE", "LOOKUPS", "HITS", "HIT RATE",
                  "EVICTIONS");
        for (int i = 0; i < k; i++) {
                char device[32], tp[32], geom[64], page[24], total[24], fr[24], held[24], cached[24];
                char tokens[24], bytes[24], ks[48], vs[48], lk[24], hits[24], rate[24], ev[24];
                double lookups, h, hr, rank, size;

                p = order[i];
                lookups = num(p, "lookups");
                h = num(p, "hits");
                hr = num(p, "hit_rate");
                rank = num(p, "tp_rank");
                size = num(p, "tp_size");
                /* neither a device nor the host backend: not reported */
                if (device_key(p) >= 1e9 && isnan(num(p, "device")) && strcmp(str(p, "backend"), "host") != 0)
                        snprintf(device, sizeof device, "-");
                else if (device_key(p) >= 1e9)
                        snprintf(device, sizeof device, "host");
                else
                        snprintf(device, sizeof device, "%.0f", device_key(p));
                /* Rank/size of a tensor-parallel pool; "-" for a plain one. */
                if (!isnan(rank) && !isnan(size))
                        snprintf(tp, sizeof tp, "%.0f/%.0f", rank, size);
                else
                        snprintf(tp, sizeof tp, "-");
                if (isnan(num(p, "layers")) || isnan(num(p, "kv_heads")) || isnan(num(p, "head_dim")))
                        snprintf(geom, sizeof geom, "-");
                else
                        snprintf(geom, sizeof geom, "%.0fx%.0fx%.0f", num(p, "layers"), num(p, "kv_heads"),
                                 num(p, "head_dim"));
                /* The hit rate is the daemon's when it gives one, else derived. */
                if (isnan(hr) && !isnan(lookups) && lookups > 0 && !isnan(h))
                        hr = h / lookups;
                if (isnan(hr) || isnan(lookups) || lookups == 0)
                        snprintf(rate, sizeof rate, "-");
                else
                        snprintf(rate, sizeof rate, "%.1f%%", 100.0 * hr);
                table_row(&t1, device, str(p, "name"), tp, str(p, "dtype"), str(p, "backend"), geom,
                          fmt_count(page, sizeof page, num(p, "page_size")),
                          fmt_count(total, sizeof total, num(p, "pages_total")),
                          fmt_count(fr, sizeof fr, num(p, "pages_free")),
                          fmt_count(held, sizeof held, num(p, "pages_held")),
                          fmt_count(cached, sizeof cached, num(p, "pages_cached")),
                          fmt_count(tokens, sizeof tokens, num(p, "token_capacity")),
                          fmt_bytes(bytes, sizeof bytes, num(p, "bytes")));
                table_row(&t2, device, str(p, "name"), str(p, "scale_source"),
                          fmt_range(ks, sizeof ks, num(p, "k_scale_min"), num(p, "k_scale_max")),
                          fmt_range(vs, sizeof vs, num(p, "v_scale_min"), num(p, "v_scale_max")),
                          fmt_count(lk, sizeof lk, lookups), fmt_count(hits, sizeof hits, h), rate,
                          fmt_count(ev, sizeof ev, num(p, "evictions")));
        }
        free(order);
        table_print(&t1, "");
        printf("\n");
        table_print(&t2, "");
}

/* total: clients_total, every session (a daemon lists at most 2048 of them;
 * one from before that key: -1) */
static void print_clients(const cJSON *clients, double total)
{
        struct table t;
        const cJSON *c;
        int n = cJSON_GetArraySize(clients);

        if (n == 0 && total <= 0) {
                printf("clients: none\n");
                return;
        }
        if (n == 0) {
                printf("clients: %.0f, none listed\n", total);
                return;
        }
        if (table_init(&t, 6, n + 1) != 0) {
                fprintf(stderr, "kvpoolctl: out of memory\n");
                return;
        }
        table_row(&t, "CLIENT", "PID", "UID", "SESSION", "PAGES HELD", "TENANT");
        cJSON_ArrayForEach(c, clients) {
                char pid[24], uid[24], sid[24], held[24];
                const cJSON *tenant = cJSON_GetObjectItemCaseSensitive(c, "tenant");

                table_row(&t, str(c, "name"), fmt_count(pid, sizeof pid, num(c, "pid")),
                          fmt_count(uid, sizeof uid, num(c, "uid")),
                          fmt_count(sid, sizeof sid, num(c, "session_id")),
                          fmt_count(held, sizeof held, num(c, "pages_held")),
                          cJSON_IsTrue(tenant) ? "yes" : "no");
        }
        table_print(&t, "");
        if (total > n)
                printf("... and %.0f more clients (STATUS lists the %d oldest)\n", total - n, n);
}

/* What v is, for a message about a status key of the wrong type. */
static const char *json_kind(const cJSON *v)
{
        if (v == NULL)
                return "missing";
        if (cJSON_IsNumber(v))
                return "a number";
        if (cJSON_IsString(v))
                return "a string";
        if (cJSON_IsObject(v))
                return "an object";
        if (cJSON_IsArray(v))
                return "an array";
        if (cJSON_IsBool(v))
                return "a boolean";
        return "null";
}

/* The array at key of the status document, or NULL after saying on stderr
 * that it is missing or of another type: a table of nothing would read as
 * "pools: none", which the daemon did not say. */
static const cJSON *status_array(const cJSON *doc, const char *key)
{
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(doc, key);

        if (cJSON_IsArray(v))
                return v;
        fprintf(stderr, "kvpoolctl: the daemon's status has no \"%s\" array (%s)\n", key, json_kind(v));
        return NULL;
}

static int print_status(const char *text, int json)
{
        cJSON *doc = cJSON_Parse(text);
        const cJSON *pools, *clients;
        char up[32], pid[24];
        int rv = 0;

        if (doc == NULL) {
                fprintf(stderr, "kvpoolctl: the daemon's status is not valid JSON\n");
                return 1;
        }
        if (json) {
                char *pretty = cJSON_Print(doc);

                if (pretty == NULL) {
                        cJSON_Delete(doc);
                        fprintf(stderr, "kvpoolctl: out of memory\n");
                        return 1;
                }
                printf("%s\n", pretty);
                free(pretty);
                cJSON_Delete(doc);
                return 0;
        }
        /* every key below is looked up in an object: another document
         * (an array, a string) is not a status, whatever it holds */
        if (!cJSON_IsObject(doc)) {
                fprintf(stderr, "kvpoolctl: the daemon's status is not a JSON object (%s)\n", json_kind(doc));
                cJSON_Delete(doc);
                return 1;
        }
        printf("kvpoold %s, pid %s, up %s, socket %s, events %s\n\n", str(doc, "version"),
               fmt_count(pid, sizeof pid, num(doc, "pid")), fmt_uptime(up, sizeof up, num(doc, "uptime_s")),
               str(doc, "socket"), str(doc, "events"));
        /* what is there is shown; a missing list makes the exit status 1 */
        if ((pools = status_array(doc, "pools")) != NULL)
                print_pools(pools);
        else
                rv = 1;
        printf("\n");
        if ((clients = status_array(doc, "clients")) != NULL) {
                const cJSON *tot = cJSON_GetObjectItemCaseSensitive(doc, "clients_total");

                print_clients(clients, cJSON_IsNumber(tot) ? tot->valuedouble : -1);
        } else {
                rv = 1;
        }
        cJSON_Delete(doc);
        return rv;
}

/* ---- commands ----------------------------------------------------------------- */

static int connect_or_say(const char *url, kvc_client **ret)
{
        int rv = kvc_connect(url, "kvpoolctl", NULL, ret);

        if (rv == 0)
                return 0;
        if (rv == -ECONNREFUSED)
                fprintf(stderr, "kvpoolctl: cannot reach kvpoold at %s: nothing is listening there "
                        "(is kvpoold running?)\n", url);
        else
                fprintf(stderr, "kvpoolctl: cannot reach kvpoold at %s: %s\n", url,
                        kvc_errmsg(NULL)[0] ? kvc_errmsg(NULL) : strerror(-rv));
        return 1;
}

static int cmd_text(const char *url, int status, int json)
{
        kvc_client *c;
        char *text = NULL;
        int rv;

        if (connect_or_say(url, &c) != 0)
                return 1;
        rv = status ? kvc_status_json(c, &text) : kvc_metrics_text(c, &text);
        if (rv != 0) {
                fprintf(stderr, "kvpoolctl: %s\n", kvc_errmsg(c));
                kvc_disconnect(c);
                return 1;
        }
        kvc_disconnect(c);
        if (status) {
                rv = print_status(text, json);
        } else {
                size_t n = strlen(text);

                fputs(text, stdout);
                if (n > 0 && text[n - 1] != '\n')
                        putchar('\n');
        }
        free(text);
        if (rv == 0)
                rv = ctl_output_done("kvpoolctl");
        return rv;
}

static int cmd_reset(const char *url, const char *pool)
{
        kvc_client *c;
        uint32_t n = 0;

        if (connect_or_say(url, &c) != 0)
                return 1;
        if (kvc_reset_prefixes(c, pool, &n) != 0) {
                fprintf(stderr, "kvpoolctl: %s\n", kvc_errmsg(c));
                kvc_disconnect(c);
                return 1;
        }
        kvc_disconnect(c);
        printf("pool %s: %u prefix-cache key%s dropped\n", pool, n, n == 1 ? "" : "s");
        return ctl_output_done("kvpoolctl");
}

/* Takes the value of --opt VALUE or --opt=VALUE at argv[*i]; NULL if absent. */
static const char *opt_value(int argc, char **argv, int *i, const char *opt)
{
        size_t n = strlen(opt);

        if (strncmp(argv[*i], opt, n) == 0 && argv[*i][n] == '=')
                return argv[*i] + n + 1;
        if (strcmp(argv[*i], opt) == 0 && *i + 1 < argc)
                return argv[++*i];
        return NULL;
}

/* NULL when u is a socket URL kvpoold could listen on (kv_url_check, the
 * daemon's own check) under the 255 bytes libkvclient keeps, else what is
 * wrong with it, in buf: a malformed URL is a usage error (exit 2), not a
 * daemon that is not there (exit 1). */
static const char *url_problem(const char *u, char *buf, size_t n)
{
        if (*u == '\0')
                snprintf(buf, n, "the URL is empty");
        else if (strlen(u) > 255)
                snprintf(buf, n, "the URL is longer than 255 bytes");
        else if (kv_url_check(u, buf, n) == 0)
                return NULL;
        return buf;
}

int main(int argc, char **argv)
{
        const char *url = NULL, *events = NULL, *cmd, *why;
        char events_buf[512], whybuf[512];
        int i, json = 0;

        for (i = 1; i < argc && argv[i][0] == '-'; i++) {
                const char *v;

                if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
                        if (i + 1 < argc)
                                return usage_error("%s takes nothing after it", argv[i]);
                        fputs(usage_text, stdout);
                        return ctl_output_done("kvpoolctl");
                }
                if (strcmp(argv[i], "-V") == 0 || strcmp(argv[i], "--version") == 0) {
                        if (i + 1 < argc)
                                return usage_error("%s takes nothing after it", argv[i]);
                        printf("kvpoolctl %s\n", KV_VERSION);
                        return ctl_output_done("kvpoolctl");
                }
                if ((v = opt_value(argc, argv, &i, "--socket")) != NULL) {
                        if ((why = url_problem(v, whybuf, sizeof whybuf)) != NULL)
                                return usage_error("--socket: %s", why);
                        url = v;
                } else if ((v = opt_value(argc, argv, &i, "--events")) != NULL) {
                        if ((why = url_problem(v, whybuf, sizeof whybuf)) != NULL)
                                return usage_error("--events: %s", why);
                        events = v;
                } else if (strcmp(argv[i], "--socket") == 0 || strcmp(argv[i], "--events") == 0)
                        return usage_error("%s needs a URL", argv[i]);
                else
                        return usage_error("unknown option '%s'", argv[i]);
        }
        if (i >= argc)
                return usage_error("no command given");
        if (url == NULL) {
                const char *env = getenv("KVPOOL_SOCKET");

                if (env != NULL && *env != '\0') {
                        if ((why = url_problem(env, whybuf, sizeof whybuf)) != NULL)
                                return usage_error("KVPOOL_SOCKET: %s", why);
                        url = env;
                }
        }
        if (url == NULL)
                url = KVC_DEFAULT_SOCKET;
        cmd = argv[i];

        if (strcmp(cmd, "status") == 0) {
                for (int j = i + 1; j < argc; j++) {
                        if (strcmp(argv[j], "--json") == 0)
                                json = 1;
                        else
                                return usage_error("status: unknown option '%s'", argv[j]);
                }
                return cmd_text(url, 1, json);
        }
        if (strcmp(cmd, "metrics") == 0) {
                if (i + 1 < argc)
                        return usage_error("metrics: unknown option '%s'", argv[i + 1]);
                return cmd_text(url, 0, 0);
        }
        if (strcmp(cmd, "events") == 0) {
                for (int j = i + 1; j < argc; j++) {
                        if (strcmp(argv[j], "--json") == 0) {
                                json = 1;
                        } else if (strcmp(argv[j], "--count") == 0) {
                                if (++j >= argc)
                                        return usage_error("events: --count needs a number");
                        } else if (strncmp(argv[j], "--count=", 8) != 0) {
                                return usage_error("events: unknown option '%s'", argv[j]);
                        }
                }
                if (events == NULL) {
                        /* the daemon's own default: events.sock beside its socket */
                        if (kv_default_events_url(url, events_buf, sizeof events_buf) < 0) {
                                fprintf(stderr, "kvpoolctl: events: no default event socket for %s (not an "
                                                "ipc:// URL, or too long): name one with --events URL\n", url);
                                return 2;
                        }
                        events = events_buf;
                }
#if KV_HAVE_CTL_EVENTS
                return ctl_events_main(events, json, argc - i, argv + i);
#else
                fprintf(stderr, "kvpoolctl: events: this build has no event subscriber\n");
                return 1;
#endif
        }
        if (strcmp(cmd, "reset-prefixes") == 0) {
                if (i + 1 >= argc)
                        return usage_error("reset-prefixes: name the pool");
                if (i + 2 < argc)
                        return usage_error("reset-prefixes: one pool, got also '%s'", argv[i + 2]);
                if (argv[i + 1][0] == '\0' || strlen(argv[i + 1]) > 31)
                        return usage_error("reset-prefixes: pool name '%s' must be 1 to 31 bytes", argv[i + 1]);
                return cmd_reset(url, argv[i + 1]);
        }
        if (strcmp(cmd, "help") == 0) {
                if (i + 1 < argc)
                        return usage_error("help takes no arguments, got '%s'", argv[i + 1]);
                fputs(usage_text, stdout);
                return ctl_output_done("kvpoolctl");
        }
        return usage_error("unknown command '%s'", cmd);
}
