/* safetensors.c - the "safetensors" source of per-layer FP8 scales
 * (scales.h, design §3): the k/v scale tensors of a checkpoint, found by
 * name in its header (or in a sharded checkpoint's index and the shards it
 * names) and read as scalars.  Like the rest of scales.c it validates every
 * field and names the file, tensor and layer of whatever is wrong; the file
 * and JSON helpers come from scales.c (scales_int.h).
 */
#include "safetensors.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "scales_int.h"

#define ST_HEADER_MAX (100u << 20) /* the safetensors format's own limit */

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
        if (kvd_sc_parse_index(digits, ret_layer) < 0)
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

/* The [begin, end) of tensor name (header entry t) in the data section of
 * data_size bytes into off[2]: 0, or -EINVAL naming the file and tensor. */
static int tensor_span(const char *path, const char *name, const cJSON *t, uint64_t data_size, uint64_t off[2],
                       char *err, size_t errlen)
{
        const cJSON *offs = cJSON_GetObjectItemCaseSensitive(t, "data_offsets"), *it;
        int i = 0;

        if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2)
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: \"data_offsets\" must be [begin, end]", path, name);
        cJSON_ArrayForEach(it, offs) {
                double d = cJSON_IsNumber(it) ? it->valuedouble : -1.0;
                if (!(d >= 0 && d <= 9007199254740992.0) || d != floor(d))
                        return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: data_offsets: expected whole numbers >= 0",
                                           path, name);
                off[i++] = (uint64_t)d;
        }
        if (off[1] < off[0] || off[1] > data_size)
                return kvd_sc_fail(err, errlen, -EINVAL,
                                   "%s: tensor %s: data_offsets [%llu, %llu] lie outside the data section (%llu bytes)", path,
                                   name, (unsigned long long)off[0], (unsigned long long)off[1],
                                   (unsigned long long)data_size);
        return 0;
}

struct span {
        uint64_t    begin, end;
        const char *name;
};

static int span_cmp(const void *a, const void *b)
{
        const struct span *x = a, *y = b;

        if (x->begin != y->begin)
                return x->begin < y->begin ? -1 : 1;
        return x->end < y->end ? -1 : x->end > y->end;
}

/* Checks the data_offsets of every tensor of the header root, not only the
 * scales': each within the data section, and no byte in two tensors (the
 * format's own rule; the safetensors library refuses such a file).  Why
 * all of them: a scale whose bytes are also another tensor's (a corrupt or
 * hand-edited header) reads that tensor's bytes as a plausible scale, and a
 * weight that runs past the end of the data is a truncated checkpoint;
 * either loaded before without a word.  0, -ENOMEM, or -EINVAL naming the
 * file and the tensor(s). */
static int check_spans(const char *path, const cJSON *root, uint64_t data_size, char *err, size_t errlen)
{
        const cJSON *t;
        struct span *s;
        size_t n = 0, cap = (size_t)cJSON_GetArraySize(root);
        int r = 0;

        if (!cap)
                return 0;
        if (!(s = malloc(cap * sizeof(*s))))
                return kvd_sc_fail(err, errlen, -ENOMEM, "%s: out of memory for %zu header entries", path, cap);
        cJSON_ArrayForEach(t, root) {
                uint64_t off[2];

                if (!strcmp(t->string, "__metadata__")) /* free-form strings, no data */
                        continue;
                if (!cJSON_IsObject(t)) {
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: expected an object in the header, got %s",
                                        path, t->string, kvd_sc_json_type(t));
                        goto out;
                }
                if ((r = tensor_span(path, t->string, t, data_size, off, err, errlen)))
                        goto out;
                s[n++] = (struct span){ off[0], off[1], t->string };
        }
        qsort(s, n, sizeof(*s), span_cmp);
        for (size_t i = 1; i < n; i++) {
                if (s[i].begin < s[i - 1].end) {
                        r = kvd_sc_fail(err, errlen, -EINVAL,
                                        "%s: tensors %s (data_offsets [%llu, %llu]) and %s ([%llu, %llu]) overlap: "
                                        "each byte of the data section belongs to one tensor (a corrupt header?)",
                                        path, s[i - 1].name, (unsigned long long)s[i - 1].begin,
                                        (unsigned long long)s[i - 1].end, s[i].name, (unsigned long long)s[i].begin,
                                        (unsigned long long)s[i].end);
                        goto out;
                }
        }
out:
        free(s);
        return r;
}

/* Validates one scale tensor's header entry and reads its value. */
static int read_scale(const char *path, int fd, uint64_t data_start, uint64_t data_size, const char *name,
                      const cJSON *t, float *ret, char *err, size_t errlen)
{
        const cJSON *dt, *shape, *it;
        uint64_t off[2];
        size_t esize;
        uint8_t raw[4];
        int r;

        if (!cJSON_IsObject(t))
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: expected an object in the header, got %s", path, name,
                                   kvd_sc_json_type(t));
        dt = cJSON_GetObjectItemCaseSensitive(t, "dtype");
        if (!cJSON_IsString(dt))
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: \"dtype\" missing", path, name);
        if (!strcmp(dt->valuestring, "F32"))
                esize = 4;
        else if (!strcmp(dt->valuestring, "BF16") || !strcmp(dt->valuestring, "F16"))
                esize = 2;
        else
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: dtype %s, expected F32, BF16 or F16", path, name,
                                   dt->valuestring);
        shape = cJSON_GetObjectItemCaseSensitive(t, "shape");
        if (!cJSON_IsArray(shape))
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: \"shape\" missing", path, name);
        if (cJSON_GetArraySize(shape) > 1 ||
            (cJSON_GetArraySize(shape) == 1 && !(cJSON_IsNumber(shape->child) && shape->child->valuedouble == 1.0))) {
                char s[64] = "";
                cJSON_ArrayForEach(it, shape) {
                        snprintf(s + strlen(s), sizeof s - strlen(s), "%s%g", it == shape->child ? "" : ", ",
                                 cJSON_IsNumber(it) ? it->valuedouble : -1.0);
                }
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: shape [%s], expected a scalar ([] or [1])", path,
                                   name, s);
        }
        if ((r = tensor_span(path, name, t, data_size, off, err, errlen)))
                return r;
        if (off[1] - off[0] != esize)
                return kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: data_offsets span %llu bytes, expected %zu for one %s",
                                   path, name, (unsigned long long)(off[1] - off[0]), esize, dt->valuestring);
        if (kvd_sc_read_at(fd, raw, esize, data_start + off[0]))
                return kvd_sc_fail(err, errlen, -EIO, "%s: tensor %s: cannot read its %zu bytes", path, name, esize);
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
        int r, fd = kvd_sc_open_regular(path, &size, err, errlen);

        if (fd < 0)
                return fd;
        if (size < 8 || kvd_sc_read_at(fd, lenbuf, 8, 0)) {
                r = kvd_sc_fail(err, errlen, -EINVAL,
                                "%s: %llu bytes, too short for the 8-byte header length of a safetensors file", path,
                                (unsigned long long)size);
                goto out;
        }
        hlen = 0;
        for (int i = 7; i >= 0; i--)
                hlen = hlen << 8 | lenbuf[i];
        if (hlen > size - 8) {
                r = kvd_sc_fail(err, errlen, -EINVAL,
                                "%s: header length %llu runs past the end of the file (%llu bytes): truncated, or not a "
                                "safetensors file", path, (unsigned long long)hlen, (unsigned long long)size);
                goto out;
        }
        if (hlen > ST_HEADER_MAX || hlen < 2) {
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: header length %llu, expected 2..%u bytes", path,
                                (unsigned long long)hlen, ST_HEADER_MAX);
                goto out;
        }
        hdr = malloc((size_t)hlen + 1);
        if (!hdr) {
                r = kvd_sc_fail(err, errlen, -ENOMEM, "%s: out of memory for a %llu-byte header", path,
                                (unsigned long long)hlen);
                goto out;
        }
        if (kvd_sc_read_at(fd, hdr, (size_t)hlen, 8)) {
                r = kvd_sc_fail(err, errlen, -EIO, "%s: cannot read the %llu-byte header", path, (unsigned long long)hlen);
                goto out;
        }
        hdr[hlen] = 0;
        if ((r = kvd_sc_parse_json(path, hdr, (size_t)hlen, &root, err, errlen)))
                goto out;
        if (!cJSON_IsObject(root)) {
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: header: expected a JSON object of tensors, got %s", path,
                                kvd_sc_json_type(root));
                goto out;
        }
        if ((r = check_spans(path, root, size - 8 - hlen, err, errlen)))
                goto out;
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
                        r = kvd_sc_fail(err, errlen, -EINVAL,
                                        "%s: tensor %s: layer %u, but the pool has %u layers (0..%u): is this the "
                                        "checkpoint of this pool's model?", path, t->string, l, ld->L, ld->L - 1);
                        goto out;
                }
                if ((r = read_scale(path, fd, 8 + hlen, size - 8 - hlen, t->string, t, &f, err, errlen)))
                        goto out;
                /* as for JSON scales */
                if (!kvd_sc_scale_ok(f, &f)) {
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s (layer %u): value %g, expected a positive "
                                        "finite scale of at least 2^-126", path, t->string, l, (double)f);
                        goto out;
                }
                from = scale_names[which].is_v ? &ld->v_from[l] : &ld->k_from[l];
                if (*from >= 0) {
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: layer %u has two %s_scale tensors: model.layers.%u%s "
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
                                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: tensor %s: listed in %s's weight_map but not "
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

        if ((r = kvd_sc_read_json(path, &root, err, errlen)))
                return r;
        wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
        if (!cJSON_IsObject(wm)) {
                r = kvd_sc_fail(err, errlen, -EINVAL, "%s: weight_map: expected an object {tensor name: shard file}, got %s",
                                path, kvd_sc_json_type(wm));
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
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: weight_map.%s: expected a shard file name relative to "
                                        "the index's folder, got %s", path, m->string,
                                        cJSON_IsString(m) ? m->valuestring : kvd_sc_json_type(m));
                        goto out;
                }
                for (prev = wm->child; prev != m && !done; prev = prev->next)
                        done = match_name(prev->string, &l) >= 0 && cJSON_IsString(prev) &&
                               !strcmp(prev->valuestring, m->valuestring);
                if (done)
                        continue;
                if ((size_t)snprintf(shard, sizeof shard, "%s/%s", dir, m->valuestring) >= sizeof shard) {
                        r = kvd_sc_fail(err, errlen, -EINVAL, "%s: weight_map.%s: shard path too long", path, m->string);
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

int kvd_safetensors_scales(const char *path, uint32_t L, float *k, float *v, char *err, size_t errlen)
{
        struct st_load ld = { .L = L, .k = k, .v = v };
        char where[600];
        size_t n = strlen(path);
        struct stat st;
        int r;

        ld.k_from = malloc(L);
        ld.v_from = malloc(L);
        if (!ld.k_from || !ld.v_from) {
                r = kvd_sc_fail(err, errlen, -ENOMEM, "%s: out of memory", path);
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
                        r = kvd_sc_fail(err, errlen, -EINVAL,
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
