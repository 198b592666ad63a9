/* scales.c - per-layer FP8 scaling factors from a constant, a vLLM/SGLang
 * quantization-param JSON file, or a safetensors checkpoint (design §3).
 *
 * Everything here runs once per pool at startup (or for --check-config), so
 * it favours complete validation and precise messages over speed: a scale
 * that is wrong by a factor of ten silently ruins a model's accuracy, so
 * nothing is guessed and nothing falls back.
 */
#include "scales.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kvclient.h"

#define JSON_FILE_MAX (64u << 20)  /* a scales JSON or a checkpoint index */
#define ST_HEADER_MAX (100u << 20) /* the safetensors format's own limit */
#define MAX_INDEX     100000000u   /* rank and layer keys */

/* Formats a message into err (which may be NULL) and returns code. */
static __attribute__((format(printf, 4, 5))) int fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
        va_list ap;

        if (err && errlen) {
                va_start(ap, fmt);
                vsnprintf(err, errlen, fmt, ap);
                va_end(ap);
        }
        return code;
}

static const char *json_type(const cJSON *j)
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
                return json_type(j);
        return buf;
}

/* A canonical decimal index ("0", "17"; not "01", "+1", " 1", "1.0"). */
static int parse_index(const char *s, uint32_t *ret)
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
static int open_regular(const char *path, uint64_t *ret_size, char *err, size_t errlen)
{
        struct stat st;
        int fd = open(path, O_RDONLY | O_CLOEXEC);

        if (fd < 0)
                return fail(err, errlen, errno == ENOENT ? -ENOENT : -EIO, "%s: cannot open: %s", path,
                            strerror(errno));
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                close(fd);
                return fail(err, errlen, -EINVAL, "%s: not a regular file", path);
        }
        *ret_size = (uint64_t)st.st_size;
        return fd;
}

/* Reads exactly n bytes at off (retrying short reads); 0 or -EIO. */
static int read_at(int fd, void *buf, size_t n, uint64_t off)
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
        int r, fd = open_regular(path, &size, err, errlen);

        if (fd < 0)
                return fd;
        if (size > max)
                r = fail(err, errlen, -EINVAL, "%s: %llu bytes, more than the %zu allowed for this file", path,
                         (unsigned long long)size, max);
        else if (!(buf = malloc((size_t)size + 1)))
                r = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
        else if ((r = read_at(fd, buf, (size_t)size, 0)))
                r = fail(err, errlen, -EIO, "%s: read failed: %s", path, strerror(-r));
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
static int parse_json(const char *path, const char *buf, size_t len, cJSON **ret, char *err, size_t errlen)
{
        const char *end = NULL;
        cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, 0);
        size_t off, line = 1, col = 1;
        char near[24];

        if (j) {
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
        return fail(err, errlen, -EINVAL, "%s:%zu:%zu: not valid JSON near \"%s\" (NaN and Infinity are not JSON numbers)",
                    path, line, col, near);
}

/* Reads and parses a whole JSON file; the caller deletes *ret. */
static int read_json(const char *path, cJSON **ret, char *err, size_t errlen)
{
        char *buf = NULL;
        size_t len = 0;
        int r = slurp(path, JSON_FILE_MAX, &buf, &len, err, errlen);

        if (r)
                return r;
        r = parse_json(path, buf, len, ret, err, errlen);
        free(buf);
        return r;
}

/* A scale as stored: float32, positive, finite.  Converting from double
 * can overflow to inf or underflow to 0, so the check is on the float. */
static int scale_ok(double d, float *ret)
{
        float f = (float)d;

        if (!isfinite(d) || !isfinite(f) || !(f > 0.0f))
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
                        return fail(err, errlen, -EINVAL, "unknown key \"%s\" for source \"%s\" (expected %s)",
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
        if (!cJSON_IsNumber(it) || !scale_ok(it->valuedouble, ret))
                return fail(err, errlen, -EINVAL, "\"%s\": expected a positive finite number, got %s", key,
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
                if (parse_index(it->string, &i) < 0)
                        return fail(err, errlen, -EINVAL, "%s: %s: key \"%s\" is not a %s index (expected \"0\"..\"%u\"%s)",
                                    path, where, it->string, what, n - 1, hint);
                if (i >= n) {
                        if (extra < 0)
                                extra = i;
                        continue;
                }
                if (seen[i])
                        return fail(err, errlen, -EINVAL, "%s: %s: %s \"%u\" appears twice", path, where, what, i);
                seen[i] = 1;
        }
        /* A missing index is the more useful report: an extra one next to it
         * is usually the same mistake (a gap, or an off-by-one). */
        for (i = 0; i < n; i++) {
                if (seen[i])
                        continue;
                if (extra >= 0)
                        return fail(err, errlen, -EINVAL,
                                    "%s: %s: %s \"%u\" is missing and \"%lld\" is out of range (expected exactly \"0\"..\"%u\"%s)",
                                    path, where, what, i, (long long)extra, n - 1, hint);
                return fail(err, errlen, -EINVAL, "%s: %s: %s \"%u\" is missing (expected exactly \"0\"..\"%u\"%s)",
                            path, where, what, i, n - 1, hint);
        }
        if (extra >= 0)
                return fail(err, errlen, -EINVAL, "%s: %s: %s \"%lld\" is extra (expected exactly \"0\"..\"%u\"%s)",
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

        if ((r = read_json(path, &root, err, errlen)))
                return r;
        if (!cJSON_IsObject(root)) {
                r = fail(err, errlen, -EINVAL, "%s: expected a JSON object with a \"kv_cache\" key, got %s", path,
                         json_type(root));
                goto out;
        }
        kvc = cJSON_GetObjectItemCaseSensitive(root, "kv_cache");
        if (!cJSON_IsObject(kvc)) {
                r = fail(err, errlen, -EINVAL, "%s: kv_cache: expected an object with \"dtype\" and \"scaling_factor\", got %s",
                         path, json_type(kvc));
                goto out;
        }
        d = cJSON_GetObjectItemCaseSensitive(kvc, "dtype");
        if (!cJSON_IsString(d) || strcmp(d->valuestring, want)) {
                char got[64];
                if (cJSON_IsString(d))
                        snprintf(got, sizeof got, "\"%s\"", d->valuestring);
                else
                        snprintf(got, sizeof got, "%s", json_type(d));
                r = fail(err, errlen, -EINVAL, "%s: kv_cache.dtype: expected \"%s\" for a %s pool, got %s", path, want,
                         kvc_dtype_name(dt), got);
                goto out;
        }
        sf = cJSON_GetObjectItemCaseSensitive(kvc, "scaling_factor");
        if (!cJSON_IsObject(sf)) {
                r = fail(err, errlen, -EINVAL,
                         "%s: kv_cache.scaling_factor: expected an object {rank: {layer: factor}}, got %s", path,
                         json_type(sf));
                goto out;
        }
        tp = (uint32_t)cJSON_GetArraySize(sf);
        if (tp == 0) {
                r = fail(err, errlen, -EINVAL, "%s: kv_cache.scaling_factor: no tensor-parallel ranks (expected \"0\"..)",
                         path);
                goto out;
        }
        seen = malloc(tp > L ? tp : L);
        if (!seen) {
                r = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
                goto out;
        }
        if ((r = exact_indices(path, "kv_cache.scaling_factor", sf, tp, "rank", seen, err, errlen)))
                goto out;
        if (tp_rank >= tp) {
                r = fail(err, errlen, -EINVAL,
                         "%s: kv_cache.scaling_factor: tp_rank %u requested but the file has %u rank%s (\"0\"..\"%u\")",
                         path, tp_rank, tp, tp == 1 ? "" : "s", tp - 1);
                goto out;
        }
        /* Every rank is validated, not only ours: a broken rank means a
         * broken file, and the other ranks' workers would use it. */
        cJSON_ArrayForEach(rank, sf) {
                const cJSON *it;

                parse_index(rank->string, &r_idx);
                snprintf(where, sizeof where, "kv_cache.scaling_factor.\"%u\"", r_idx);
                if (!cJSON_IsObject(rank)) {
                        r = fail(err, errlen, -EINVAL, "%s: %s: expected an object {layer: factor}, got %s", path,
                                 where, json_type(rank));
                        goto out;
                }
                if ((r = exact_indices(path, where, rank, L, "layer", seen, err, errlen)))
                        goto out;
                cJSON_ArrayForEach(it, rank) {
                        uint32_t l;
                        float f;

                        parse_index(it->string, &l);
                        if (!cJSON_IsNumber(it) || !scale_ok(it->valuedouble, &f)) {
                                r = fail(err, errlen, -EINVAL, "%s: %s.\"%u\": expected a positive finite number, got %s",
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

/* ---- safetensors --------------------------------------------------------- */

/* Tensor names that carry a layer's KV scale, in the two spellings seen in
 * checkpoints (vLLM/compressed-tensors and ModelOpt). */
static const struct {
        const char *suffix;
        int         is_v;
} scale_names[] = {
        { ".self_attn.k_scale", 0 },
        { ".self_attn.v_scale", 1 },
        { ".self_attn.k_proj.k_scale", 0 },
        { ".self_attn.v_proj.v_scale", 1 },
};
#define LAYER_PREFIX "model.layers."

/* Returns the scale_names index name matches, with its layer, or -1. */
static int match_name(const char *name, uint32_t *ret_layer)
{
        char digits[16];
        const char *p, *dot;
        size_t n;

        if (strncmp(name, LAYER_PREFIX, strlen(LAYER_PREFIX)))
                return -1;
        p = name + strlen(LAYER_PREFIX);
        dot = strchr(p, '.');
        if (!dot || (n = (size_t)(dot - p)) >= sizeof digits)
                return -1;
        memcpy(digits, p, n);
        digits[n] = 0;
        if (parse_index(digits, ret_layer) < 0)
                return -1;
        for (int i = 0; i < (int)(sizeof scale_names / sizeof *scale_names); i++)
                if (!strcmp(dot, scale_names[i].suffix))
                        return i;
        return -1;
}

struct st_load {
        uint32_t L;
        float   *k, *v;
        int8_t  *k_from, *v_from; /* scale_names index that set the layer, -1 none */
};

static float half_to_float(uint16_t h)
{
        uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
        float f;

        if (e == 0)
                f = ldexpf((float)m, -24);
        else if (e == 31)
                f = m ? NAN : INFINITY;
        else
                f = ldexpf((float)(m | 0x400), (int)e - 25);
        return (h & 0x8000) ? -f : f;
}

/* Validates one scale tensor's header entry and reads its value. */
static int read_scale(const char *path, int fd, uint64_t data_start, uint64_t data_size, const char *name,
                      const cJSON *t, float *ret, char *err, size_t errlen)
{
        const cJSON *dt, *shape, *offs, *it;
        uint64_t off[2];
        size_t esize;
        uint8_t raw[4];
        int i = 0;

        if (!cJSON_IsObject(t))
                return fail(err, errlen, -EINVAL, "%s: tensor %s: expected an object in the header, got %s", path, name,
                            json_type(t));
        dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        if (!cJSON_IsString(dt))
                return fail(err, errlen, -EINVAL, "%s: tensor %s: \"dtype\" missing", path, name);
        if (!strcmp(dt->valuestring, "F32"))
                esize = 4;
        else if (!strcmp(dt->valuestring, "BF16") || !strcmp(dt->valuestring, "F16"))
                esize = 2;
        else
                return fail(err, errlen, -EINVAL, "%s: tensor %s: dtype %s, expected F32, BF16 or F16", path, name,
                            dt->valuestring);
        shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
        if (!cJSON_IsArray(shape))
                return fail(err, errlen, -EINVAL, "%s: tensor %s: \"shape\" missing", path, name);
        if (cJSON_GetArraySize(shape) > 1 ||
            (cJSON_GetArraySize(shape) == 1 && !(cJSON_IsNumber(shape->child) && shape->child->valuedouble == 1.0))) {
                char s[64] = "";
                cJSON_ArrayForEach(it, shape) {
                        snprintf(s + strlen(s), sizeof s - strlen(s), "%s%g", it == shape->child ? "" : ", ",
                                 cJSON_IsNumber(it) ? it->valuedouble : -1.0);
                }
                return fail(err, errlen, -EINVAL, "%s: tensor %s: shape [%s], expected a scalar ([] or [1])", path,
                            name, s);
        }
        offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets");
        if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
                return fail(err, errlen, -EINVAL, "%s: tensor %s: \"data_offsets\" must be [begin, end]", path, name);
        cJSON_ArrayForEach(it, offs) {
                double d = cJSON_IsNumber(it) ? it->valuedouble : -1.0;
                if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d))
                        return fail(err, errlen, -EINVAL, "%s: tensor %s: data_offsets: expected whole numbers >= 0",
                                    path, name);
                off[i++] = (uint64_t)d;
        }
        if (off[1] < off[0] || off[1] > data_size)
                return fail(err, errlen, -EINVAL,
                            "%s: tensor %s: data_offsets [%llu, %llu] lie outside the data section (%llu bytes)", path,
                            name, (unsigned long long)off[0], (unsigned long long)off[1],
                            (unsigned long long)data_size);
        if (off[1] - off[0] != esize)
                return fail(err, errlen, -EINVAL, "%s: tensor %s: data_offsets span %llu bytes, expected %zu for one %s",
                            path, name, (unsigned long long)(off[1] - off[0]), esize, dt->valuestring);
        if (read_at(fd, raw, esize, data_start + off[0]))
                return fail(err, errlen, -EIO, "%s: tensor %s: cannot read its %zu bytes", path, name, esize);
        if (esize == 4) {
                uint32_t u = (uint32_t)raw[0] | (uint32_t)raw[1] << 8 | (uint32_t)raw[2] << 16 |
                             (uint32_t)raw[3] << 24;
                memcpy(ret, &u, 4);
        } else if (dt->valuestring[0] == 'B') {
                uint32_t u = ((uint32_t)raw[0] | (uint32_t)raw[1] << 8) << 16;
                memcpy(ret, &u, 4);
        } else {
                *ret = half_to_float((uint16_t)(raw[0] | raw[1] << 8));
        }
        return 0;
}

/* Loads every scale tensor of one safetensors file.  With a weight map
 * (sharded checkpoint), only tensors the map assigns to shard_name count,
 * and every such tensor must be in this file's header. */
static int load_st_file(const char *path, const cJSON *weight_map, const char *shard_name, const char *index_path,
                        struct st_load *ld, char *err, size_t errlen)
{
        uint8_t lenbuf[8];
        uint64_t hlen, size;
        char *hdr = NULL;
        cJSON *root = NULL;
        const cJSON *t;
        int r, fd = open_regular(path, &size, err, errlen);

        if (fd < 0)
                return fd;
        if (size < 8 || read_at(fd, lenbuf, 8, 0)) {
                r = fail(err, errlen, -EINVAL,
                         "%s: %llu bytes, too short for the 8-byte header length of a safetensors file", path,
                         (unsigned long long)size);
                goto out;
        }
        hlen = 0;
        for (int i = 7; i >= 0; i--)
                hlen = hlen << 8 | lenbuf[i];
        if (hlen > size - 8) {
                r = fail(err, errlen, -EINVAL,
                         "%s: header length %llu runs past the end of the file (%llu bytes): truncated, or not a "
                         "safetensors file", path, (unsigned long long)hlen, (unsigned long long)size);
                goto out;
        }
        if (hlen > ST_HEADER_MAX || hlen < 2) {
                r = fail(err, errlen, -EINVAL, "%s: header length %llu, expected 2..%u bytes", path,
                         (unsigned long long)hlen, ST_HEADER_MAX);
                goto out;
        }
        hdr = malloc((size_t)hlen + 1);
        if (!hdr) {
                r = fail(err, errlen, -ENOMEM, "%s: out of memory for a %llu-byte header", path,
                         (unsigned long long)hlen);
                goto out;
        }
        if (read_at(fd, hdr, (size_t)hlen, 8)) {
                r = fail(err, errlen, -EIO, "%s: cannot read the %llu-byte header", path, (unsigned long long)hlen);
                goto out;
        }
        hdr[hlen] = 0;
        if ((r = parse_json(path, hdr, (size_t)hlen, &root, err, errlen)))
                goto out;
        if (!cJSON_IsObject(root)) {
                r = fail(err, errlen, -EINVAL, "%s: header: expected a JSON object of tensors, got %s", path,
                         json_type(root));
                goto out;
        }
        cJSON_ArrayForEach(t, root) {
                uint32_t l;
                int which = match_name(t->string, &l);
                int8_t *from;
                float f;

                if (which < 0)
                        continue;
                if (weight_map) {
                        const cJSON *m = cJSON_GetObjectItemCaseSensitive(weight_map, t->string);
                        if (!cJSON_IsString(m) || strcmp(m->valuestring, shard_name))
                                continue;
                }
                if (l >= ld->L) {
                        r = fail(err, errlen, -EINVAL,
                                 "%s: tensor %s: layer %u, but the pool has %u layers (0..%u): is this the "
                                 "checkpoint of this pool's model?", path, t->string, l, ld->L, ld->L - 1);
                        goto out;
                }
                if ((r = read_scale(path, fd, 8 + hlen, size - 8 - hlen, t->string, t, &f, err, errlen)))
                        goto out;
                if (!isfinite(f) || !(f > 0.0f)) {
                        r = fail(err, errlen, -EINVAL, "%s: tensor %s (layer %u): value %g, expected a positive "
                                 "finite scale", path, t->string, l, (double)f);
                        goto out;
                }
                from = scale_names[which].is_v ? &ld->v_from[l] : &ld->k_from[l];
                if (*from >= 0) {
                        r = fail(err, errlen, -EINVAL, "%s: layer %u has two %s_scale tensors: model.layers.%u%s "
                                 "and %s", path, l, scale_names[which].is_v ? "v" : "k", l,
                                 scale_names[*from].suffix, t->string);
                        goto out;
                }
                *from = (int8_t)which;
                (scale_names[which].is_v ? ld->v : ld->k)[l] = f;
        }
        /* A tensor the index promises in this shard must be there. */
        if (weight_map) {
                const cJSON *m;
                cJSON_ArrayForEach(m, weight_map) {
                        uint32_t l;
                        if (match_name(m->string, &l) < 0 || !cJSON_IsString(m) || strcmp(m->valuestring, shard_name))
                                continue;
                        if (!cJSON_GetObjectItemCaseSensitive(root, m->string)) {
                                r = fail(err, errlen, -EINVAL, "%s: tensor %s: listed in %s's weight_map but not "
                                         "in this shard's header", path, m->string, index_path);
                                goto out;
                        }
                }
        }
        r = 0;
out:
        cJSON_Delete(root);
        free(hdr);
        close(fd);
        return r;
}

static int load_st_index(const char *path, struct st_load *ld, char *err, size_t errlen)
{
        const cJSON *wm, *m, *prev;
        cJSON *root = NULL;
        char dir[512], shard[1024];
        const char *slash;
        int r;

        if ((r = read_json(path, &root, err, errlen)))
                return r;
        wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        if (!cJSON_IsObject(wm)) {
                r = fail(err, errlen, -EINVAL, "%s: weight_map: expected an object {tensor name: shard file}, got %s",
                         path, json_type(wm));
                goto out;
        }
        slash = strrchr(path, '/');
        snprintf(dir, sizeof dir, "%.*s", slash ? (int)(slash - path) : 1, slash ? path : ".");
        if (slash == path)
                strcpy(dir, "/");
        /* Each shard holding a scale is read once: the first entry naming it
         * triggers the load, later entries for the same shard are skipped. */
        cJSON_ArrayForEach(m, wm) {
                uint32_t l;
                int done = 0;

                if (match_name(m->string, &l) < 0)
                        continue;
                if (!cJSON_IsString(m) || !m->valuestring[0] || m->valuestring[0] == '/' ||
                    strstr(m->valuestring, "..")) {
                        r = fail(err, errlen, -EINVAL, "%s: weight_map.%s: expected a shard file name relative to "
                                 "the index's folder, got %s", path, m->string,
                                 cJSON_IsString(m) ? m->valuestring : json_type(m));
                        goto out;
                }
                for (prev = wm->child; prev != m && !done; prev = prev->next)
                        done = match_name(prev->string, &l) >= 0 && cJSON_IsString(prev) &&
                               !strcmp(prev->valuestring, m->valuestring);
                if (done)
                        continue;
                if ((size_t)snprintf(shard, sizeof shard, "%s/%s", dir, m->valuestring) >= sizeof shard) {
                        r = fail(err, errlen, -EINVAL, "%s: weight_map.%s: shard path too long", path, m->string);
                        goto out;
                }
                if ((r = load_st_file(shard, wm, m->valuestring, path, ld, err, errlen)))
                        goto out;
        }
        r = 0;
out:
        cJSON_Delete(root);
        return r;
}

static int load_safetensors(const char *path, uint32_t L, float *k, float *v, char *err, size_t errlen)
{
        struct st_load ld = { .L = L, .k = k, .v = v };
        char where[600];
        size_t n = strlen(path);
        struct stat st;
        int r;

        ld.k_from = malloc(L);
        ld.v_from = malloc(L);
        if (!ld.k_from || !ld.v_from) {
                r = fail(err, errlen, -ENOMEM, "%s: out of memory", path);
                goto out;
        }
        memset(ld.k_from, -1, L);
        memset(ld.v_from, -1, L);
        /* A model folder works too: its index if sharded, else its single file. */
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
                snprintf(where, sizeof where, "%s/model.safetensors.index.json", path);
                if (access(where, F_OK) != 0)
                        snprintf(where, sizeof where, "%s/model.safetensors", path);
                path = where;
                n = strlen(path);
        }
        if (n >= 5 && !strcmp(path + n - 5, ".json"))
                r = load_st_index(path, &ld, err, errlen);
        else
                r = load_st_file(path, NULL, NULL, NULL, &ld, err, errlen);
        if (r)
                goto out;
        for (uint32_t l = 0; l < L; l++) {
                if (ld.k_from[l] < 0 || ld.v_from[l] < 0) {
                        const char *kv = ld.k_from[l] < 0 ? "k" : "v";
                        r = fail(err, errlen, -EINVAL,
                                 "%s: layer %u: no %s_scale tensor (looked for model.layers.%u.self_attn.%s_scale "
                                 "and model.layers.%u.self_attn.%s_proj.%s_scale, F32/BF16/F16 scalars); the pool "
                                 "has %u layers", path, l, kv, l, kv, l, kv, kv, L);
                        goto out;
                }
        }
        r = 0;
out:
        free(ld.k_from);
        free(ld.v_from);
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
                return fail(err, errlen, -EINVAL, "unknown pool dtype \"%s\"", kv_dtype_name ? kv_dtype_name : "(null)");
        if (num_layers == 0)
                return fail(err, errlen, -EINVAL, "a pool needs at least one layer");
        fp8 = dt == KVC_DTYPE_FP8_E4M3 || dt == KVC_DTYPE_FP8_E5M2;
        memset(&s, 0, sizeof s);
        s.num_layers = num_layers;

        if (cfg) {
                if (!cJSON_IsObject(cfg))
                        return fail(err, errlen, -EINVAL, "expected an object like {\"source\": \"json\", \"path\": FILE}, got %s",
                                    json_type(cfg));
                src = cJSON_GetObjectItemCaseSensitive(cfg, "source");
                if (!cJSON_IsString(src) || (strcmp(src->valuestring, "constant") && strcmp(src->valuestring, "json") &&
                                             strcmp(src->valuestring, "safetensors")))
                        return fail(err, errlen, -EINVAL, "\"source\": expected \"constant\", \"json\" or \"safetensors\", got %s",
                                    describe(src, val, sizeof val));
                source = src->valuestring;
        }
        if (strcmp(source, "constant") && !fp8)
                return fail(err, errlen, -EINVAL,
                            "source \"%s\": scaling factors apply only to fp8 pools (fp8_e4m3, fp8_e5m2); a %s pool "
                            "stores unscaled values: remove \"scales\" or use {\"source\": \"constant\"}",
                            source, kvc_dtype_name(dt));
        if (!strcmp(source, "constant")) {
                if (cfg && ((r = check_keys(cfg, source, const_keys, err, errlen)) ||
                            (r = const_value(cfg, "k", &ck, err, errlen)) ||
                            (r = const_value(cfg, "v", &cv, err, errlen))))
                        return r;
                if (!fp8 && (ck != 1.0f || cv != 1.0f))
                        return fail(err, errlen, -EINVAL,
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
                        return fail(err, errlen, -EINVAL, "source \"%s\": \"path\": expected a file name, got %s",
                                    source, cJSON_IsString(p) ? "an empty string" : json_type(p));
                if (strlen(p->valuestring) >= sizeof s.path)
                        return fail(err, errlen, -EINVAL, "\"path\": longer than %zu bytes", sizeof s.path - 1);
                strcpy(s.path, p->valuestring);
        }
        snprintf(s.source, sizeof s.source, "%s", source);

        s.k = malloc(sizeof(float) * num_layers);
        s.v = malloc(sizeof(float) * num_layers);
        if (!s.k || !s.v) {
                r = fail(err, errlen, -ENOMEM, "out of memory for %u layers of scales", num_layers);
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
                        r = fail(err, errlen, -EINVAL, "\"tp_rank\": expected a whole number >= 0, got %s",
                                 describe(tr, val, sizeof val));
                        goto fail;
                }
                if (tr)
                        rank = (uint32_t)tr->valuedouble;
                if ((r = load_json(s.path, rank, dt, num_layers, s.k, s.v, err, errlen)))
                        goto fail;
        } else {
                if ((r = load_safetensors(s.path, num_layers, s.k, s.v, err, errlen)))
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
