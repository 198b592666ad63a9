/* config_file.c - the JSON config file of kvpoold (see config.h for the
 * keys).  Unknown keys are errors, and every error names the file and the
 * key (pools[1].head_dim) and says what was expected. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cjson/cJSON.h>
#include "config_int.h"
#include "json_strict.h"
#include "log.h"

#define MAX_CONFIG_FILE (4u << 20)

/* ---- JSON file -------------------------------------------------------------- */

/* What j is, for "expected ..., got %s": a number with its value (a
 * negative or fractional count says itself).  One call per message: the
 * number's text lives in a buffer of the calling thread. */
static const char *json_type(const cJSON *j)
{
        static _Thread_local char num[48];

        if (cJSON_IsString(j)) return "a string";
        if (cJSON_IsNumber(j)) {
                snprintf(num, sizeof(num), "%.17g", j->valuedouble);
                return num;
        }
        if (cJSON_IsBool(j)) return "a boolean";
        if (cJSON_IsNull(j)) return "null";
        if (cJSON_IsArray(j)) return "an array";
        if (cJSON_IsObject(j)) return "an object";
        return "an invalid value";
}

static int json_u32(const cJSON *j, const char *file, const char *key, uint32_t *ret, char *err, size_t errlen)
{
        double d;

        if (!cJSON_IsNumber(j))
                return kvd_cfg_fail(err, errlen, "%s: %s: expected a non-negative integer, got %s", file, key, json_type(j));
        d = j->valuedouble;
        if (d < 0 || d > UINT32_MAX || floor(d) != d)
                return kvd_cfg_fail(err, errlen, "%s: %s: expected a non-negative integer, got %s", file, key,
                                    json_type(j));
        *ret = (uint32_t)d;
        return 0;
}

static int json_string(const cJSON *j, const char *file, const char *key, const char **ret, char *err, size_t errlen)
{
        if (!cJSON_IsString(j))
                return kvd_cfg_fail(err, errlen, "%s: %s: expected a string, got %s", file, key, json_type(j));
        *ret = j->valuestring;
        return 0;
}

static int json_pressure(const cJSON *j, const char *file, const char *key, struct kvd_pool_spec *s,
                         char *err, size_t errlen)
{
        const cJSON *it;

        if (!cJSON_IsObject(j))
                return kvd_cfg_fail(err, errlen, "%s: %s: expected an object {\"low\": 0.1, \"high\": 0.2}, got %s",
                            file, key, json_type(j));
        cJSON_ArrayForEach(it, j) {
                double *dst;

                if (strcmp(it->string, "low") == 0)
                        dst = &s->pressure_low;
                else if (strcmp(it->string, "high") == 0)
                        dst = &s->pressure_high;
                else
                        return kvd_cfg_fail(err, errlen, "%s: %s.%s: unknown key (expected low, high)", file, key, it->string);
                if (!cJSON_IsNumber(it) || it->valuedouble < 0 || it->valuedouble > 1)
                        return kvd_cfg_fail(err, errlen, "%s: %s.%s: expected a free fraction between 0 and 1", file, key,
                                    it->string);
                *dst = it->valuedouble;
        }
        return 0;
}

/* "devices": [0, 1, ...], CUDA ordinals, each once. */
static int json_devices(const cJSON *j, const char *file, const char *key, struct kvd_pool_spec *s,
                        char *err, size_t errlen)
{
        const cJSON *it;
        char         where[600];
        uint32_t     i = 0;

        if (!cJSON_IsArray(j) || cJSON_GetArraySize(j) == 0)
                return kvd_cfg_fail(err, errlen, "%s: %s: expected a non-empty array of CUDA ordinals like [0, 1], got %s",
                                    file, key, cJSON_IsArray(j) ? "an empty array" : json_type(j));
        s->num_devices = 0;
        cJSON_ArrayForEach(it, j) {
                snprintf(where, sizeof(where), "%s: %s[%u]", file, key, i++);
                if (!cJSON_IsNumber(it) || floor(it->valuedouble) != it->valuedouble || fabs(it->valuedouble) > 1e9)
                        return kvd_cfg_fail(err, errlen, "%s: expected a CUDA ordinal (a whole number >= 0), got %s",
                                            where, json_type(it));
                if (kvd_cfg_add_device(s, (long long)it->valuedouble, where, err, errlen))
                        return -EINVAL;
        }
        return 0;
}

static int json_pool(const cJSON *jp, const char *file, uint32_t idx, struct kvd_pool_spec *ret,
                     char *err, size_t errlen)
{
        struct kvd_pool_spec s;
        const cJSON         *it;
        char                 key[96], where[600], e[256];
        const char          *str = NULL;
        int                  r = 0, has_device = 0;

        kvd_cfg_spec_defaults(&s);
        if (!cJSON_IsObject(jp))
                return kvd_cfg_fail(err, errlen, "%s: pools[%u]: expected an object, got %s", file, idx, json_type(jp));
        cJSON_ArrayForEach(it, jp) {
                uint32_t u = 0;

                snprintf(key, sizeof(key), "pools[%u].%s", idx, it->string);
                if (!strcmp(it->string, "name")) {
                        if (!(r = json_string(it, file, key, &str, err, errlen))) {
                                snprintf(where, sizeof(where), "%s: %s", file, key);
                                if (!(r = kvd_cfg_check_name(str, where, err, errlen)))
                                        strcpy(s.name, str);
                        }
                } else if (!strcmp(it->string, "dtype")) {
                        snprintf(where, sizeof(where), "%s: %s", file, key);
                        if (!(r = json_string(it, file, key, &str, err, errlen)))
                                r = kvd_cfg_check_dtype(str, &s.geom.dtype, where, err, errlen);
                } else if (!strcmp(it->string, "layers") || !strcmp(it->string, "kv_heads") ||
                           !strcmp(it->string, "head_dim") || !strcmp(it->string, "page_size") ||
                           !strcmp(it->string, "device")) {
                        if ((r = json_u32(it, file, key, &u, err, errlen)))
                                break;
                        if (!strcmp(it->string, "layers"))
                                s.geom.num_layers = u;
                        else if (!strcmp(it->string, "kv_heads"))
                                s.geom.kv_heads = u;
                        else if (!strcmp(it->string, "head_dim"))
                                s.geom.head_dim = u;
                        else if (!strcmp(it->string, "page_size"))
                                s.geom.page_size = u;
                        else {
                                snprintf(where, sizeof(where), "%s: %s", file, key);
                                if (!(r = kvd_cfg_check_device(u, where, err, errlen))) {
                                        s.device = (int)u;
                                        has_device = 1;
                                }
                        }
                } else if (!strcmp(it->string, "tp_size")) {
                        snprintf(where, sizeof(where), "%s: %s", file, key);
                        if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble <= UINT32_MAX &&
                            floor(it->valuedouble) == it->valuedouble)
                                r = kvd_cfg_set_tp_size(&s, (uint32_t)it->valuedouble, where, err, errlen);
                        else
                                r = kvd_cfg_fail(err, errlen, "%s: expected 1 to %u tensor-parallel ranks, got %s",
                                                 where, KVD_MAX_DEVICES, json_type(it));
                } else if (!strcmp(it->string, "devices")) {
                        r = json_devices(it, file, key, &s, err, errlen);
                } else if (!strcmp(it->string, "capacity")) {
                        if (cJSON_IsString(it)) {
                                r = kvd_config_parse_capacity(it->valuestring, &s.capacity_bytes,
                                                              &s.capacity_fraction, e, sizeof(e));
                        } else if (cJSON_IsNumber(it) && it->valuedouble > 0 && it->valuedouble < 1) {
                                s.capacity_fraction = it->valuedouble;
                        } else if (cJSON_IsNumber(it) && it->valuedouble >= 1 && it->valuedouble < 1.8e19 &&
                                   floor(it->valuedouble) == it->valuedouble) {
                                s.capacity_bytes = (uint64_t)it->valuedouble;
                        } else {
                                r = -EINVAL;
                                snprintf(e, sizeof(e),
                                         "expected bytes (a whole number or a string like \"8GiB\") or a fraction (0.9 or \"90%%\"), got %s",
                                         json_type(it));
                        }
                        if (r)
                                r = kvd_cfg_fail(err, errlen, "%s: %s: %s", file, key, e);
                } else if (!strcmp(it->string, "backend")) {
                        snprintf(where, sizeof(where), "%s: %s", file, key);
                        if (!(r = json_string(it, file, key, &str, err, errlen)) &&
                            !(r = kvd_cfg_check_backend(str, where, err, errlen)))
                                strcpy(s.backend, str);
                } else if (!strcmp(it->string, "scales")) {
                        if (!cJSON_IsObject(it)) {
                                r = kvd_cfg_fail(err, errlen, "%s: %s: expected an object like {\"source\": \"json\", \"path\": FILE}, got %s",
                                         file, key, json_type(it));
                        } else if (!s.scales_cfg && !(s.scales_cfg = cJSON_Duplicate(it, 1))) {
                                r = -ENOMEM;
                                snprintf(err, errlen, "%s: %s: out of memory", file, key);
                        }
                } else if (!strcmp(it->string, "pressure")) {
                        r = json_pressure(it, file, key, &s, err, errlen);
                } else {
                        r = kvd_cfg_fail(err, errlen,
                                 "%s: %s: unknown key (expected name, dtype, layers, kv_heads, head_dim, page_size, capacity, backend, device, tp_size, devices, scales, pressure)",
                                 file, key);
                }
                if (r)
                        break;
        }
        if (!r) {
                snprintf(where, sizeof(where), "%s: pools[%u]", file, idx);
                if (!(r = kvd_cfg_check_spec(&s, where, err, errlen)))
                        r = kvd_cfg_check_multi(&s, has_device, where, err, errlen);
        }
        if (r) {
                kvd_pool_spec_fini(&s);
                return r;
        }
        *ret = s;
        return 0;
}

/* The 1-based line of text[] that at points into. */
static unsigned line_of(const char *text, const char *at)
{
        unsigned line = 1;

        for (const char *p = text; p < at; p++)
                line += *p == '\n';
        return line;
}

static char *read_file(const char *path, size_t *ret_len, char *err, size_t errlen, int *ret_err)
{
        /* O_NONBLOCK: a FIFO named here must not hang the open (the type
         * check refuses it); a regular file ignores the flag */
        int         fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
        struct stat st;
        FILE       *f = NULL;
        char       *buf = NULL;
        size_t      n = 0;

        if (fd < 0) {
                *ret_err = -errno;
                snprintf(err, errlen, "%s: cannot open config file: %s", path, strerror(errno));
                return NULL;
        }
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
                *ret_err = -EINVAL;
                snprintf(err, errlen, "%s: cannot read config file: not a regular file", path);
                close(fd);
                return NULL;
        }
        if (!(f = fdopen(fd, "rb"))) {
                *ret_err = -ENOMEM;
                snprintf(err, errlen, "%s: cannot read config file: out of memory", path);
                close(fd);
                return NULL;
        }
        buf = malloc(MAX_CONFIG_FILE + 1);
        if (buf)
                n = fread(buf, 1, MAX_CONFIG_FILE + 1, f);
        if (!buf || ferror(f) || n > MAX_CONFIG_FILE) {
                *ret_err = !buf ? -ENOMEM : ferror(f) ? -EIO : -EFBIG;
                snprintf(err, errlen, "%s: cannot read config file: %s", path,
                         !buf ? "out of memory" : ferror(f) ? "read error" : "larger than 4 MiB");
                free(buf);
                fclose(f);
                return NULL;
        }
        fclose(f);
        buf[n] = 0;
        *ret_len = n;
        return buf;
}



static int set_scalar(const cJSON *it, const char *file, char **dst, int *has, int nullable,
                      char *err, size_t errlen)
{
        if (nullable && cJSON_IsNull(it)) {
                *has = 1;
                return 0;
        }
        if (!cJSON_IsString(it))
                return kvd_cfg_fail(err, errlen, "%s: %s: expected a string, got %s", file, it->string, json_type(it));
        free(*dst);
        if (!(*dst = strdup(it->valuestring)))
                return -ENOMEM;
        *has = 1;
        return 0;
}

int kvd_cfg_load_file(const char *file, struct kvd_cfg_scalars *sc, struct kvd_pool_spec **pools, uint32_t *npools,
                     char *err, size_t errlen)
{
        const cJSON *it;
        cJSON       *root;
        const char  *end = NULL;
        size_t       len = 0;
        char        *text;
        int          r = 0;

        if (!(text = read_file(file, &len, err, errlen, &r)))
                return r;
        {
                long bad = kvd_utf8_bad(text, len);

                if (bad >= 0) {
                        r = kvd_cfg_fail(err, errlen, "%s: byte %ld (0x%02x) is not UTF-8 (JSON text is UTF-8)", file,
                                         bad, (unsigned)(unsigned char)text[bad]);
                        free(text);
                        return r;
                }
        }
        root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
        if (!root) {
                const char *at = end ? end : cJSON_GetErrorPtr();

                if (!at || at < text || at > text + len)
                        at = text;
                r = kvd_cfg_fail(err, errlen, "%s: line %u: JSON syntax error near \"%.20s\"", file,
                                 line_of(text, at), at);
                free(text);
                return r;
        }
        {
                const char *rest = kvd_json_trailing(end, text + len), *dkey = NULL;
                char        path[256] = "";
                long        nul = -1;

                if (rest) {
                        r = kvd_cfg_fail(err, errlen, "%s: line %u: text after the JSON object: \"%.20s\"", file,
                                         line_of(text, rest), rest);
                } else if (kvd_json_dup_key(root, path, sizeof(path), 0, &dkey)) {
                        r = kvd_cfg_fail(err, errlen, "%s: %s: key \"%s\" given twice", file,
                                         path[0] ? path : "the top level", dkey);
                } else if ((nul = kvd_json_nul(text, (size_t)(end - text))) >= 0) {
                        r = kvd_cfg_fail(err, errlen,
                                         "%s: line %u: \\u0000 in a string, escaped or as a raw 0 byte (a NUL would cut the string short)",
                                         file, line_of(text, text + nul));
                }
                if (r) {
                        free(text);
                        cJSON_Delete(root);
                        return r;
                }
        }
        free(text);
        if (!cJSON_IsObject(root)) {
                r = kvd_cfg_fail(err, errlen, "%s: expected a JSON object at the top level, got %s", file, json_type(root));
                goto out;
        }
        cJSON_ArrayForEach(it, root) {
                if (!strcmp(it->string, "socket")) {
                        r = set_scalar(it, file, &sc->socket, &sc->has_socket, 0, err, errlen);
                } else if (!strcmp(it->string, "events")) {
                        r = set_scalar(it, file, &sc->events, &sc->has_events, 1, err, errlen);
                } else if (!strcmp(it->string, "metrics")) {
                        r = set_scalar(it, file, &sc->metrics, &sc->has_metrics, 1, err, errlen);
                } else if (!strcmp(it->string, "group")) {
                        r = set_scalar(it, file, &sc->group, &sc->has_group, 1, err, errlen);
                } else if (!strcmp(it->string, "log_level")) {
                        if (!cJSON_IsString(it) || kvd_log_parse_level(it->valuestring, &sc->log_level))
                                r = kvd_cfg_fail(err, errlen, "%s: log_level: expected \"error\", \"warning\", \"info\" or \"debug\"",
                                         file);
                        sc->has_log_level = 1;
                } else if (!strcmp(it->string, "pools")) {
                        uint32_t n = (uint32_t)cJSON_GetArraySize(it), i = 0;
                        const cJSON *jp;

                        if (!cJSON_IsArray(it)) {
                                r = kvd_cfg_fail(err, errlen, "%s: pools: expected an array of pool objects, got %s",
                                         file, json_type(it));
                                break;
                        }
                        if (n == 0) {
                                r = kvd_cfg_fail(err, errlen, "%s: pools: an empty list (leave the key out for "
                                                 "the default pool)", file);
                                break;
                        }
                        if (n > KVD_MAX_POOLS) {
                                r = kvd_cfg_fail(err, errlen, "%s: pools: %u pools, at most %u are supported", file, n,
                                         KVD_MAX_POOLS);
                                break;
                        }
                        if (n && !(*pools = calloc(n, sizeof(**pools)))) {
                                r = -ENOMEM;
                                break;
                        }
                        cJSON_ArrayForEach(jp, it) {
                                if ((r = json_pool(jp, file, i, &(*pools)[i], err, errlen)))
                                        break;
                                *npools = ++i;
                        }
                } else {
                        r = kvd_cfg_fail(err, errlen,
                                 "%s: %s: unknown key (expected socket, events, metrics, group, log_level, pools)",
                                 file, it->string);
                }
                if (r)
                        break;
        }
out:
        cJSON_Delete(root);
        return r;
}
