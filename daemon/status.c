/* status.c - the STATUS JSON document (see status.h). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "status.h"
#include "config.h"
#include "server.h"
#include "session.h"

/* STATUS lists at most this many clients, the oldest sessions first, and
 * counts them all in clients_total, so that the reply always fits its
 * frame: a client is at most about 180 bytes of JSON (a 31-byte name of
 * quotes escapes to 62), 2048 of them about 370 KB beside at most 64 pools,
 * while anyone who may connect could otherwise open enough idle
 * connections (about 12000) to push the reply past KV_MAX_FRAME, and STATUS,
 * the health check, would fail for everyone.  $KVPOOLD_STATUS_CLIENTS sets
 * a lower limit (1 to 2048). */
#define STATUS_CLIENTS_MAX 2048

/* The limit in force (status.h): read once, first from kvd_server_new
 * before the serving thread exists, then only by it. */
unsigned kvd_status_clients_max(void)
{
        static unsigned max;

        if (!max)
                max = (unsigned)kvd_env_number("KVPOOLD_STATUS_CLIENTS", 1, STATUS_CLIENTS_MAX, STATUS_CLIENTS_MAX,
                                               "clients");
        return max;
}

/* cJSON keeps numbers as doubles: exact for every count below 2^53. */
static int add_num(cJSON *o, const char *k, double v)
{
        return cJSON_AddNumberToObject(o, k, v) != NULL;
}

static int add_str(cJSON *o, const char *k, const char *v)
{
        return cJSON_AddStringToObject(o, k, v ? v : "") != NULL;
}

static cJSON *pool_json(const struct kvd_pool *p)
{
        const struct kv_layout *L = &p->layout;
        struct kvd_pages_stats  st;
        cJSON                  *o = cJSON_CreateObject();
        const char             *dname = kvc_dtype_name(L->g.dtype);
        int                     ok;

        if (!o)
                return NULL;
        kvd_pages_get_stats(p->pages, &st);
        ok = add_str(o, "name", p->name) &&
             add_str(o, "dtype", dname ? dname : "unknown") &&
             add_str(o, "backend", p->backend ? p->backend->name : "none") &&
             add_num(o, "device", p->region.kind == KV_BACKEND_HOST ? -1 : p->region.device) &&
             add_num(o, "layers", L->g.num_layers) &&
             add_num(o, "kv_heads", L->g.kv_heads) &&
             add_num(o, "head_dim", L->g.head_dim) &&
             add_num(o, "page_size", L->g.page_size) &&
             add_num(o, "pages_total", st.total) &&
             add_num(o, "pages_free", st.free) &&
             add_num(o, "pages_held", st.held) &&
             add_num(o, "pages_cached", st.cached) &&
             add_num(o, "cached_idle", st.cached_idle) &&
             add_num(o, "token_capacity", (double)kv_layout_tokens(L)) &&
             add_num(o, "bytes", (double)p->region.bytes) &&
             add_str(o, "scale_source", p->scales.source) &&
             add_str(o, "scale_path", p->scales.path) &&
             add_num(o, "k_scale_min", p->scales.k_min) &&
             add_num(o, "k_scale_max", p->scales.k_max) &&
             add_num(o, "v_scale_min", p->scales.v_min) &&
             add_num(o, "v_scale_max", p->scales.v_max) &&
             add_num(o, "lookups", (double)st.lookups) &&
             add_num(o, "hits", (double)st.hits) &&
             add_num(o, "hit_rate", st.lookups ? (double)st.hits / (double)st.lookups : 0.0) &&
             add_num(o, "evictions", (double)st.evictions) &&
             add_num(o, "prefix_resets", (double)st.resets) &&
             add_num(o, "keys_reset", (double)st.keys_reset) &&
             /* Several GPUs (issue 8): the configured spec it came from, and
              * its tensor-parallel rank (null for a pool that is not one). */
             add_str(o, "group", p->group) && /* kvd_pool_new always names it */
             (p->tp_size ? add_num(o, "tp_rank", p->tp_rank) : cJSON_AddNullToObject(o, "tp_rank") != NULL) &&
             (p->tp_size ? add_num(o, "tp_size", p->tp_size) : cJSON_AddNullToObject(o, "tp_size") != NULL);
        if (!ok) {
                cJSON_Delete(o);
                return NULL;
        }
        return o;
}

static cJSON *client_json(const struct kvd_server *s, const struct kvd_session *ss)
{
        cJSON   *o = cJSON_CreateObject();
        uint64_t held = 0;
        int      ok;

        if (!o)
                return NULL;
        for (uint32_t i = 0; i < kvd_server_pool_count(s); i++)
                held += kvd_pages_session_count(kvd_server_pool(s, i)->pages, ss->id);
        ok = add_str(o, "name", ss->name) &&
             add_num(o, "pid", (double)ss->pid) &&
             add_num(o, "uid", (double)ss->uid) &&
             add_num(o, "session_id", ss->id) &&
             add_num(o, "pages_held", (double)held) &&
             cJSON_AddBoolToObject(o, "tenant", ss->tenant) != NULL;
        if (!ok) {
                cJSON_Delete(o);
                return NULL;
        }
        return o;
}

static int by_session_id(const void *a, const void *b)
{
        const struct kvd_session *x = *(const struct kvd_session *const *)a;
        const struct kvd_session *y = *(const struct kvd_session *const *)b;

        return x->id < y->id ? -1 : x->id > y->id;
}

char *kvd_status_json(const struct kvd_server *s)
{
        const struct kvd_session *ss;
        const char               *ev = kvd_server_events_url(s);
        cJSON                    *root = cJSON_CreateObject(), *pools, *clients, *item;
        const struct kvd_session **order = NULL;
        uint32_t                  cursor = 0, n;
        char                     *text = NULL;

        if (!root)
                return NULL;
        if (!add_str(root, "version", KVD_VERSION) || !add_num(root, "pid", getpid()) ||
            !add_num(root, "uptime_s", kvd_server_uptime(s)) ||
            !add_str(root, "socket", kvd_server_socket_url(s)) ||
            !(ev ? cJSON_AddStringToObject(root, "events", ev) : cJSON_AddNullToObject(root, "events")) ||
            !(pools = cJSON_AddArrayToObject(root, "pools")) ||
            !(clients = cJSON_AddArrayToObject(root, "clients")))
                goto out;
        for (uint32_t i = 0; i < kvd_server_pool_count(s); i++) {
                if (!(item = pool_json(kvd_server_pool(s, i))))
                        goto out;
                cJSON_AddItemToArray(pools, item);
        }
        /* Clients in the order they connected (the table's order is a hash's). */
        n = kvd_sessions_count(kvd_server_sessions(s));
        if (n && !(order = malloc(n * sizeof(*order))))
                goto out;
        for (uint32_t i = 0; i < n && (ss = kvd_sessions_next(kvd_server_sessions(s), &cursor)); i++)
                order[i] = ss;
        qsort(order, n, sizeof(*order), by_session_id);
        const uint32_t listed = n < kvd_status_clients_max() ? n : kvd_status_clients_max();
        for (uint32_t i = 0; i < listed; i++) {
                if (!(item = client_json(s, order[i])))
                        goto out;
                cJSON_AddItemToArray(clients, item);
        }
        if (!add_num(root, "clients_total", n))
                goto out;
        text = cJSON_PrintUnformatted(root);
out:
        free(order);
        cJSON_Delete(root);
        return text;
}
