/* json_strict.h - what cJSON accepts and kvpoold's files must not contain:
 * text after the JSON value (cJSON stops at the value's end and reports
 * success), and a key repeated within one object (cJSON keeps both: a
 * lookup finds the first, a walk over the object sees both, so one part of
 * the daemon would read one value and another part the other).  Used on the
 * config file, scale JSON files and safetensors headers.
 */
#ifndef KVD_JSON_STRICT_H
#define KVD_JSON_STRICT_H

#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

/* The first character of [end, limit) that is not JSON whitespace, or NULL
 * when there is none. */
static inline const char *kvd_json_trailing(const char *end, const char *limit)
{
        for (const char *p = end; p && p < limit; p++)
                if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0')
                        return p;
        return NULL;
}

/* Looks for a key given twice in one object anywhere under node: 1 with
 * *ret_key the key and path[] (cap bytes, holding len bytes of the path so
 * far, e.g. "pools[0].scales") the object's place; 0 when there is none. */
static inline int kvd_json_dup_key(const cJSON *node, char *path, size_t cap, size_t len, const char **ret_key)
{
        const cJSON *a, *b;
        unsigned i = 0;

        if (cJSON_IsObject(node)) {
                for (a = node->child; a; a = a->next)
                        for (b = node->child; b != a; b = b->next)
                                if (a->string && b->string && strcmp(a->string, b->string) == 0) {
                                        *ret_key = a->string;
                                        return 1;
                                }
        }
        if (!cJSON_IsObject(node) && !cJSON_IsArray(node))
                return 0;
        for (a = node->child; a; a = a->next, i++) {
                int n = cJSON_IsObject(node) ? snprintf(path + len, cap - len, "%s%s", len ? "." : "", a->string)
                                             : snprintf(path + len, cap - len, "[%u]", i);
                size_t nl = n < 0 ? len : len + (size_t)n < cap ? len + (size_t)n : cap - 1;

                if (kvd_json_dup_key(a, path, cap, nl, ret_key))
                        return 1;
                path[len] = 0;
        }
        return 0;
}

#endif
