/* json_strict.h - what cJSON accepts and kvpoold's files must not contain:
 * text after the JSON value (cJSON stops at the value's end and reports
 * success), a key repeated within one object (cJSON keeps both: a lookup
 * finds the first, a walk over the object sees both, so one part of the
 * daemon would read one value and another part the other), and the escape
 * \u0000 in a string (cJSON keeps strings as C strings, so the value would
 * silently end there: "p0\u0000x" would name pool p0).  Used on the config
 * file, scale JSON files and safetensors headers.
 */
#ifndef KVD_JSON_STRICT_H
#define KVD_JSON_STRICT_H

#include <stdio.h>
#include <stdlib.h>
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

/* The offset of the first byte of s[0..n) that is not part of valid UTF-8
 * (RFC 8259 wants JSON text in UTF-8, and the daemon echoes strings of its
 * configuration in STATUS, which clients parse as JSON), or -1. */
static inline long kvd_utf8_bad(const char *s, size_t n)
{
        const unsigned char *p = (const unsigned char *)s;
        size_t i = 0;

        while (i < n) {
                unsigned c = p[i], len, min;
                unsigned long cp;

                if (c < 0x80) {
                        i++;
                        continue;
                }
                if ((c & 0xE0) == 0xC0)
                        len = 2, min = 0x80, cp = c & 0x1F;
                else if ((c & 0xF0) == 0xE0)
                        len = 3, min = 0x800, cp = c & 0x0F;
                else if ((c & 0xF8) == 0xF0)
                        len = 4, min = 0x10000, cp = c & 0x07;
                else
                        return (long)i;
                if (i + len > n)
                        return (long)i;
                for (unsigned k = 1; k < len; k++) {
                        if ((p[i + k] & 0xC0) != 0x80)
                                return (long)i;
                        cp = cp << 6 | (p[i + k] & 0x3F);
                }
                /* overlong forms, surrogates and code points past U+10FFFF */
                if (cp < min || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF)
                        return (long)i;
                i += len;
        }
        return -1;
}

/* The offset of the first NUL in the JSON value s[0..n) (pass the parse
 * end, not the buffer's: a file may end in NUL padding): a \u0000 escape (a
 * backslash that is not itself escaped, then u0000) or a raw 0 byte, which
 * cJSON also takes into a string (JSON forbids control characters there,
 * cJSON does not), or -1.  Either would end the C string early. */
static inline long kvd_json_nul(const char *s, size_t n)
{
        for (size_t i = 0; i < n; i++) {
                if (s[i] == '\0')
                        return (long)i;
                if (s[i] != '\\')
                        continue;
                if (i + 6 <= n && memcmp(s + i + 1, "u0000", 5) == 0)
                        return (long)i;
                i++; /* the escaped character: \\ must not start another escape */
        }
        return -1;
}

/* Key comparisons kvd_json_dup_key has made in this translation unit and
 * thread: a test's measure of its cost (a sum, never reset here). */
static _Thread_local unsigned long long kvd_json_key_compares;

static inline int kvd_json_key_cmp(const void *a, const void *b)
{
        kvd_json_key_compares++;
        return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The key given twice among obj's members, or NULL.  Sorted, not compared
 * pairwise: an object's members compared with every other member cost
 * n^2/2 comparisons, and a sharded checkpoint's index of a large model has
 * tens of thousands of weight_map entries (36000: 15 s at start, before
 * systemd's start timeout was half spent; 90000 would pass it).  Pairwise
 * for a handful of members, or when the array cannot be allocated (slow but
 * right). */
static inline const char *kvd_json_dup_in_object(const cJSON *obj)
{
        const cJSON *a, *b;
        const char **keys = NULL, *dup = NULL;
        size_t       n = 0;

        for (a = obj->child; a; a = a->next)
                n += a->string != NULL;
        if (n > 8)
                keys = (const char **)malloc(n * sizeof(*keys));
        if (!keys) {
                for (a = obj->child; a; a = a->next)
                        for (b = obj->child; b != a; b = b->next)
                                if (a->string && b->string && kvd_json_key_cmp(&a->string, &b->string) == 0)
                                        return a->string;
                return NULL;
        }
        n = 0;
        for (a = obj->child; a; a = a->next)
                if (a->string)
                        keys[n++] = a->string;
        qsort(keys, n, sizeof(*keys), kvd_json_key_cmp);
        for (size_t i = 1; i < n && !dup; i++)
                if (kvd_json_key_cmp(&keys[i - 1], &keys[i]) == 0)
                        dup = keys[i];
        free(keys);
        return dup;
}

/* Looks for a key given twice in one object anywhere under node: 1 with
 * *ret_key the key and path[] (cap bytes, holding len bytes of the path so
 * far, e.g. "pools[0].scales") the object's place; 0 when there is none.
 * O(n log n) in an object's members. */
static inline int kvd_json_dup_key(const cJSON *node, char *path, size_t cap, size_t len, const char **ret_key)
{
        const cJSON *a;
        const char  *dup = cJSON_IsObject(node) ? kvd_json_dup_in_object(node) : NULL;
        unsigned     i = 0;

        if (dup) {
                *ret_key = dup; /* only when found: *ret_key untouched otherwise */
                return 1;
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
