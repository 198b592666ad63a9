/* scales.c - per-layer FP8 scaling factors from a constant, a vLLM/SGLang
 * quantization-param JSON file, or a safetensors checkpoint (design §3).
 *
 * Everything here runs once per pool at startup (or for --check-config), so
 * it favours complete validation and precise messages over speed: a scale
 * that is wrong by a factor of ten silently ruins a model's accuracy, so
 * nothing is guessed and nothing falls back.
 *
 * The safetensors reader lives in safetensors.c; the file and JSON helpers
 * it shares with the sources here are declared in scales_int.h.
 */
#include "scales.h"

#include <errno.h>
#include <float.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvclient.h"
#include "json_strict.h"
#include "safetensors.h"
#include "scales_int.h"

#define JSON_FILE_MAX (64u << 20)  /* a scales JSON or a checkpoint index */
#define MAX_INDEX     100000000u   /* rank and layer keys */

/* Formats a message into err (which may be NULL) and returns code. */
int kvd_sc_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return code;
}

const char *kvd_sc_json_type(const cJSON *j)
{
        if (cJSON_IsNumber(j)) return "a number";
        if (cJSON_IsString(j)) return "a string";
        if (cJSON_IsObject(j)) return "an object";
        if (cJSON_IsArray(j))  return "an array";
        if (cJSON_IsBool(j))   return "a boolean";
        if (cJSON_IsNull(j))   return "null";
        return "nothing";
}

/* A JSON value for an error message: numbers and strings shown, else the type. */
static const char *describe(const cJSON *j, char *buf, size_t n)
{
        if (cJSON_IsNumber(j))
                snprintf(buf, n, "%g", j->valuedouble);
        else if (cJSON_IsString(j))
                snprintf(buf, n, "a string \"%.48s\"", j->valuestring);
        else
                return kvd_sc_json_type(j);
        return buf;
}

/* A canonical decimal index ("0", "17"; not "01", "+1", " 1", "1.0"). */
int kvd_sc_parse_index(const char *s, uint32_t *ret)
{
        uint64_t v = 0;
        size_t n = strlen(s);

        if (n == 0 || n > 9 || (n > 1 && s[0] == '0'))
                return -1;
        for (size_t i = 0; i < n; i++) {
                if (s[i] < '0' || s[i] > '9')
                        return -1;
                v = v * 10 + (uint64_t)(s[i] - '0');
        }
        if (v >= MAX_INDEX)
                return -1;
        *ret = (uint32_t)v;
        return 0;
}

/* Opens a regular file for reading; returns the fd or a negative errno. */
int kvd_sc_open_regular(const char *path, uint64_t *ret_size, char *err, size_t errlen)
{
        struct stat st;
        /* O_NONBLOCK: a FIFO or a device named here must not hang the open
         * (the type check below refuses it); a regular file ignores it */
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);

        if (fd < 0)
                return kvd_sc_fail(err, errlen, errno == ENOENT ? -ENOENT : -EIO, "%s: cannot open: %s", path,
                                   strerror(errno));
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: not a regular file", path);
        }
        *ret_size = (uint64_t)st.st_size;
        return fd;
}

/* Reads exactly n bytes at off (retrying short reads); 0 or -EIO. */
int kvd_sc_read_at(int fd, void *buf, size_t n, uint64_t off)
{
        size_t got = 0;

        while (got < n) {
                ssize_t r = pread(fd, (char *)buf + got, n - got, (off_t)(off + got));
                if (r < 0 && errno == EINTR)
                        continue;
                if (r <= 0)
                        return r < 0 ? -errno : -EIO; /* 0: the file shrank under us */
                got += (size_t)r;
        }
        return 0;
}

/* Reads a whole (small) file.  The caller frees *ret_buf, which is NUL
 * terminated for convenience. */
static int slurp(const char *path, size_t max, char **ret_buf, size_t *ret_len, char *err, size_t errlen)
{
        uint64_t size;
        char *buf = NULL;
        int r, fd = kvd_sc_open_regular(path, &size, err, errlen);

        if (fd < 0)
                return fd;
        if (size > max)
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: %llu bytes, more than the %zu allowed for this file", path,
                                (unsigned long long)size, max);
        else if (!(buf = malloc((size_t)size + 1)))
                r = kvd_sc_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
        else if ((r = kvd_sc_read_at(fd, buf, (size_t)size, 0)))
                r = kvd_sc_fail(err, errlen, -EIO, "%s: read failed: %s", path, strerror(-r));
        else
                r = 0;
        close(fd);
        if (r) {
                free(buf);
                return r;
        }
        buf[size] = 0;
        *ret_buf = buf;
        *ret_len = (size_t)size;
        return 0;
}

/* Parses JSON text; on error names the line, column and the text there. */
int kvd_sc_parse_json(const char *path, const char *buf, size_t len, cJSON **ret, char *err, size_t errlen)
{
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
        size_t off, line = 1, col = 1;
        char near[24];

        if (j) {
                const char *rest = kvd_json_trailing(end, buf + len), *dkey = NULL;
                char where[256] = "";
                int r = 0;
                long nul = -1;

                if (rest)
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: text after the JSON value at byte %zu: \"%.20s\"",
                                        path, (size_t)(rest - buf), rest);
                else if (kvd_json_dup_key(j, where, sizeof where, 0, &dkey))
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: %s: key \"%s\" given twice", path,
                                        where[0] ? where : "the top level", dkey);
                else if ((nul = kvd_json_nul(buf, (size_t)(end - buf))) >= 0)
                        r = kvd_sc_fail(err, errlen, -EINVAL,
                                        "%s: byte %ld: \\u0000 in a string, escaped or as a raw 0 byte (a NUL would cut the string short)",
                                        path, nul);
                if (r) {
                        cJSON_Delete(j);
                        return r;
                }
                *ret = j;
                return 0;
        }
        off = end && end >= buf && end <= buf + len ? (size_t)(end - buf) : 0;
        for (size_t i = 0; i < off; i++) {
                if (buf[i] == '\n') {
                        line++;
                        col = 1;
                } else {
                        col++;
                }
        }
        /* Show a little context before the error point too: a NaN or a
         * missing comma is easiest to see with the key in front of it.
         * Binary garbage is shown as '?' so the message stays one clean line. */
        size_t from = off > 12 ? off - 12 : 0, n = 0;
        for (size_t i = from; i < len && n < sizeof near - 1; i++)
                near[n++] = (unsigned char)buf[i] < 0x20 ? ' ' : (unsigned char)buf[i] >= 0x7f ? '?' : buf[i];
        near[n] = 0;
        /* the note only where the text shows one of them */
        const int nonum = strcasestr(near, "nan") || strcasestr(near, "inf");
        return kvd_sc_fail(err, errlen, -EINVAL, "%s:%zu:%zu: not valid JSON near \"%s\"%s", path, line, col, near,
                           nonum ? " (NaN and Infinity are not JSON numbers)" : "");
}

/* Reads and parses a whole JSON file; the caller deletes *ret. */
int kvd_sc_read_json(const char *path, cJSON **ret, char *err, size_t errlen)
{
        char *buf = NULL;
        size_t len = 0;
        int r = slurp(path, JSON_FILE_MAX, &buf, &len, err, errlen);

        if (r)
                return r;
        r = kvd_sc_parse_json(path, buf, len, ret, err, errlen);
        free(buf);
        return r;
}

/* A scale as stored: float32, positive, finite.  Converting from double
 * can overflow to inf or underflow to 0, so the check is on the float. */
int kvd_sc_scale_ok(double d, float *ret)
{
        float f = (float)d;

        /* a subnormal scale turns every nonzero value into an overflow */
        if (!isfinite(d) || !isfinite(f) || !(f >= FLT_MIN))
                return 0;
        *ret = f;
        return 1;
}

/* ---- constant ---------------------------------------------------------- */

static int check_keys(const cJSON *cfg, const char *source, const char *const *allowed, char *err, size_t errlen)
{
        const cJSON *it;

        cJSON_ArrayForEach(it, cfg) {
                int ok = 0;
                for (const char *const *a = allowed; *a; a++)
                        ok |= !strcmp(it->string, *a);
                if (!ok) {
                        char list[128] = "";
                        for (const char *const *a = allowed; *a; a++)
                                snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s",
                                         a == allowed ? "" : ", ", *a);
                        return kvd_sc_fail(err, errlen, -EINVAL, "unknown key \"%s\" for source \"%s\" (expected %s)",
                                           it->string, source, list);
                }
        }
        return 0;
}

static int const_value(const cJSON *cfg, const char *key, float *ret, char *err, size_t errlen)
{
        const cJSON *it = cJSON_GetObjectItemCaseSensitive(cfg, key);
        char val[80];

        if (!it) {
                *ret = 1.0f;
                return 0;
        }
        if (!cJSON_IsNumber(it) || !kvd_sc_scale_ok(it->valuedouble, ret))
                return kvd_sc_fail(err, errlen, -EINVAL, "\"%s\": expected a positive finite float of at least 2^-126, got %s", key,
                                   describe(it, val, sizeof val));
        return 0;
}

/* ---- vLLM / SGLang quantization-param JSON ----------------------------- */

/* Checks that the keys of obj are exactly "0".."n-1", each once.
 * what = "rank" or "layer"; seen is scratch of n bytes. */
static int exact_indices(const char *path, const char *where, const cJSON *obj, uint32_t n, const char *what,
                         uint8_t *seen, char *err, size_t errlen)
{
        const char *hint = !strcmp(what, "layer") ? ", the pool's layer count" : ", one per tensor-parallel rank";
        const cJSON *it;
        int64_t extra = -1;
        uint32_t i;

        memset(seen, 0, n);
        cJSON_ArrayForEach(it, obj) {
                if (kvd_sc_parse_index(it->string, &i) < 0)
                        return kvd_sc_fail(err, errlen, -EINVAL, "%s: %s: key \"%s\" is not a %s index (expected \"0\"..\"%u\"%s)",
                                           path, where, it->string, what, n - 1, hint);
                if (i >= n) {
                        if (extra < 0)
                                extra = i;
                        continue;
                }
                if (seen[i])
                        return kvd_sc_fail(err, errlen, -EINVAL, "%s: %s: %s \"%u\" appears twice", path, where, what, i);
                seen[i] = 1;
        }
        /* A missing index is the more useful report: an extra one next to it
         * is usually the same mistake (a gap, or an off-by-one). */
        for (i = 0; i < n; i++) {
                if (seen[i])
                        continue;
                if (extra >= 0)
                        return kvd_sc_fail(err, errlen, -EINVAL,
                                           "%s: %s: %s \"%u\" is missing and \"%lld\" is out of range (expected exactly \"0\"..\"%u\"%s)",
                                           path, where, what, i, (long long)extra, n - 1, hint);
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: %s: %s \"%u\" is missing (expected exactly \"0\"..\"%u\"%s)",
                                   path, where, what, i, n - 1, hint);
        }
        if (extra >= 0)
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: %s: %s \"%lld\" is extra (expected exactly \"0\"..\"%u\"%s)",
                                   path, where, what, (long long)extra, n - 1, hint);
        return 0;
}

static int load_json(const char *path, uint32_t tp_rank, enum kvc_dtype dt, uint32_t L, float *k, float *v,
                     char *err, size_t errlen)
{
        const char *want = dt == KVC_DTYPE_FP8_E4M3 ? "float8_e4m3fn" : "float8_e5m2";
        const cJSON *kvc, *d, *sf, *rank;
        cJSON *root = NULL;
        char where[64], val[80];
        uint8_t *seen = NULL;
        uint32_t tp = 0, r_idx;
        int r;

        if ((r = kvd_sc_read_json(path, &root, err, errlen)))
                return r;
        if (!cJSON_IsObject(root)) {
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: expected a JSON object with a \"kv_cache\" key, got %s", path,
                                kvd_sc_json_type(root));
                goto out;
        }
        kvc = cJSON_GetObjectItemCaseSensitive(root, "kv_cache");
        if (!cJSON_IsObject(kvc)) {
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: kv_cache: expected an object with \"dtype\" and \"scaling_factor\", got %s",
                                path, kvd_sc_json_type(kvc));
                goto out;
        }
        d = cJSON_GetObjectItemCaseSensitive(kvc, "dtype");
        if (!cJSON_IsString(d) || strcmp(d->valuestring, want)) {
                char got[64];
                if (cJSON_IsString(d))
                        snprintf(got, sizeof got, "\"%s\"", d->valuestring);
                else
                        snprintf(got, sizeof got, "%s", kvd_sc_json_type(d));
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: kv_cache.dtype: expected \"%s\" for a %s pool, got %s", path, want,
                                kvc_dtype_name(dt), got);
                goto out;
        }
        sf = cJSON_GetObjectItemCaseSensitive(kvc, "scaling_factor");
        if (!cJSON_IsObject(sf)) {
                r = kvd_sc_fail(err, errlen, -EINVAL,
                                "%s: kv_cache.scaling_factor: expected an object {rank: {layer: factor}}, got %s", path,
                                kvd_sc_json_type(sf));
                goto out;
        }
        tp = (uint32_t)cJSON_GetArraySize(sf);
        if (tp == 0) {
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: kv_cache.scaling_factor: no tensor-parallel ranks (expected \"0\"..)",
                                path);
                goto out;
        }
        seen = malloc(tp > L ? tp : L);
        if (!seen) {
                r = kvd_sc_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
                goto out;
        }
        if ((r = exact_indices(path, "kv_cache.scaling_factor", sf, tp, "rank", seen, err, errlen)))
                goto out;
        if (tp_rank >= tp) {
                r = kvd_sc_fail(err, errlen, -EINVAL,
                                "%s: kv_cache.scaling_factor: tp_rank %u requested but the file has %u rank%s (\"0\"..\"%u\")",
                                path, tp_rank, tp, tp == 1 ? "" : "s", tp - 1);
                goto out;
        }
        /* Every rank is validated, not only ours: a broken rank means a
         * broken file, and the other ranks' workers would use it. */
        cJSON_ArrayForEach(rank, sf) {
                const cJSON *it;

                kvd_sc_parse_index(rank->string, &r_idx);
                snprintf(where, sizeof where, "kv_cache.scaling_factor.\"%u\"", r_idx);
                if (!cJSON_IsObject(rank)) {
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: %s: expected an object {layer: factor}, got %s", path,
                                        where, kvd_sc_json_type(rank));
                        goto out;
                }
                if ((r = exact_indices(path, where, rank, L, "layer", seen, err, errlen)))
                        goto out;
                cJSON_ArrayForEach(it, rank) {
                        uint32_t l;
                        float f;

                        kvd_sc_parse_index(it->string, &l);
                        if (!cJSON_IsNumber(it) || !kvd_sc_scale_ok(it->valuedouble, &f)) {
                                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: %s.\"%u\": expected a positive finite float of at least 2^-126, got %s",
                                                path, where, l, describe(it, val, sizeof val));
                                goto out;
                        }
                        if (r_idx == tp_rank)
                                k[l] = v[l] = f; /* one factor serves K and V */
                }
        }
        r = 0;
out:
        free(seen);
        cJSON_Delete(root);
        return r;
}

/* ---- entry points ------------------------------------------------------ */

int kvd_scales_load(const cJSON *cfg, uint32_t num_layers, const char *kv_dtype_name, struct kvd_scales *ret,
                    char *err, size_t errlen)
{
        static const char *const const_keys[] = { "source", "k", "v", NULL };
        static const char *const json_keys[] = { "source", "path", "tp_rank", NULL };
        static const char *const st_keys[] = { "source", "path", NULL };
        struct kvd_scales s;
        enum kvc_dtype dt;
        const cJSON *src = NULL, *p;
        const char *source = "constant";
        float ck = 1.0f, cv = 1.0f;
        char val[80];
        int fp8, r;

        if (!kv_dtype_name || kvc_dtype_parse(kv_dtype_name, &dt))
                return kvd_sc_fail(err, errlen, -EINVAL, "unknown pool dtype \"%s\"", kv_dtype_name ? kv_dtype_name : "(null)");
        if (num_layers == 0)
                return kvd_sc_fail(err, errlen, -EINVAL, "a pool needs at least one layer");
        fp8 = dt == KVC_DTYPE_FP8_E4M3 || dt == KVC_DTYPE_FP8_E5M2;
        memset(&s, 0, sizeof s);
        s.num_layers = num_layers;

        if (cfg) {
                if (!cJSON_IsObject(cfg))
                        return kvd_sc_fail(err, errlen, -EINVAL, "expected an object like {\"source\": \"json\", \"path\": FILE}, got %s",
                                           kvd_sc_json_type(cfg));
                src = cJSON_GetObjectItemCaseSensitive(cfg, "source");
                if (!cJSON_IsString(src) || (strcmp(src->valuestring, "constant") && strcmp(src->valuestring, "json") &&
                                             strcmp(src->valuestring, "safetensors")))
                        return kvd_sc_fail(err, errlen, -EINVAL, "\"source\": expected \"constant\", \"json\" or \"safetensors\", got %s",
                                           describe(src, val, sizeof val));
                source = src->valuestring;
        }
        if (strcmp(source, "constant") && !fp8)
                return kvd_sc_fail(err, errlen, -EINVAL,
                                   "source \"%s\": scaling factors apply only to fp8 pools (fp8_e4m3, fp8_e5m2); a %s pool "
                                   "stores unscaled values: remove \"scales\" or use {\"source\": \"constant\"}",
                                   source, kvc_dtype_name(dt));
        if (!strcmp(source, "constant")) {
                if (cfg && ((r = check_keys(cfg, source, const_keys, err, errlen)) ||
                            (r = const_value(cfg, "k", &ck, err, errlen)) ||
                            (r = const_value(cfg, "v", &cv, err, errlen))))
                        return r;
                if (!fp8 && (ck != 1.0f || cv != 1.0f))
                        return kvd_sc_fail(err, errlen, -EINVAL,
                                           "constant k=%g v=%g: a %s pool stores unscaled values, so its scales are 1.0 "
                                           "(set k and v only on fp8 pools)", (double)ck, (double)cv, kvc_dtype_name(dt));
                /* Only fp8 uses the scales; for the others 1.0 is exact. */
                s.warn_unscaled = fp8;
        } else {
                r = check_keys(cfg, source, strcmp(source, "json") ? st_keys : json_keys, err, errlen);
                if (r)
                        return r;
                p = cJSON_GetObjectItemCaseSensitive(cfg, "path");
                if (!cJSON_IsString(p) || !p->valuestring[0])
                        return kvd_sc_fail(err, errlen, -EINVAL, "source \"%s\": \"path\": expected a file name, got %s",
                                           source, cJSON_IsString(p) ? "an empty string" : kvd_sc_json_type(p));
                if (strlen(p->valuestring) >= sizeof s.path)
                        return kvd_sc_fail(err, errlen, -EINVAL, "\"path\": longer than %zu bytes", sizeof s.path - 1);
                strcpy(s.path, p->valuestring);
        }
        snprintf(s.source, sizeof s.source, "%s", source);

        s.k = malloc(sizeof(float) * num_layers);
        s.v = malloc(sizeof(float) * num_layers);
        if (!s.k || !s.v) {
                r = kvd_sc_fail(err, errlen, -ENOMEM, "out of memory for %u layers of scales", num_layers);
                goto fail;
        }
        if (!strcmp(source, "constant")) {
                for (uint32_t l = 0; l < num_layers; l++) {
                        s.k[l] = ck;
                        s.v[l] = cv;
                }
        } else if (!strcmp(source, "json")) {
                const cJSON *tr = cJSON_GetObjectItemCaseSensitive(cfg, "tp_rank");
                uint32_t rank = 0;

                if (tr && (!cJSON_IsNumber(tr) || tr->valuedouble < 0 || tr->valuedouble >= MAX_INDEX ||
                           tr->valuedouble != floor(tr->valuedouble))) {
                        r = kvd_sc_fail(err, errlen, -EINVAL, "\"tp_rank\": expected a whole number >= 0, got %s",
                                        describe(tr, val, sizeof val));
                        goto fail;
                }
                if (tr)
                        rank = (uint32_t)tr->valuedouble;
                if ((r = load_json(s.path, rank, dt, num_layers, s.k, s.v, err, errlen)))
                        goto fail;
        } else {
                if ((r = kvd_safetensors_scales(s.path, num_layers, s.k, s.v, err, errlen)))
                        goto fail;
        }
        s.k_min = s.k_max = s.k[0];
        s.v_min = s.v_max = s.v[0];
        for (uint32_t l = 1; l < num_layers; l++) {
                s.k_min = fminf(s.k_min, s.k[l]);
                s.k_max = fmaxf(s.k_max, s.k[l]);
                s.v_min = fminf(s.v_min, s.v[l]);
                s.v_max = fmaxf(s.v_max, s.v[l]);
        }
        *ret = s;
        return 0;
fail:
        free(s.k);
        free(s.v);
        return r;
}

void kvd_scales_fini(struct kvd_scales *s)
{
        if (!s)
                return;
        free(s->k);
        free(s->v);
        s->k = NULL;
        s->v = NULL;
}
