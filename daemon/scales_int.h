/* scales_int.h - what the scale sources of scales.c and the safetensors
 * reader (safetensors.c) share: error messages, bounded file reads, strict
 * JSON parsing, canonical indices.  Internal to the daemon core; defined in
 * scales.c. */
#ifndef KVD_SCALES_INT_H
#define KVD_SCALES_INT_H

#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>

/* Formats a message into err (which may be NULL) and returns code. */
int kvd_sc_fail(char *err, size_t errlen, int code, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

/* "a number", "a string", "an object", ... for messages ("nothing" for NULL). */
const char *kvd_sc_json_type(const cJSON *j);

/* A canonical decimal index below 10^8 ("0", "17"; not "01", "+1", " 1",
 * "1.0") into *ret; 0, or -1 leaving *ret alone. */
int kvd_sc_parse_index(const char *s, uint32_t *ret);

/* Opens a regular file for reading: the fd (and its size in *ret_size), or a
 * negative errno with err naming the file. */
int kvd_sc_open_regular(const char *path, uint64_t *ret_size, char *err, size_t errlen);

/* Reads exactly n bytes at off (retrying short reads): 0 or a negative errno
 * (-EIO when the file ends first). */
int kvd_sc_read_at(int fd, void *buf, size_t n, uint64_t off);

/* Parses len bytes of JSON text from path into *ret (the caller deletes it);
 * -EINVAL naming the line, column and the text there. */
int kvd_sc_parse_json(const char *path, const char *buf, size_t len, cJSON **ret, char *err, size_t errlen);

/* A usable scale: d as a float that is finite and at least FLT_MIN (a
 * subnormal scale turns every nonzero value into an overflow) into *ret;
 * 1, or 0 leaving *ret alone. */
int kvd_sc_scale_ok(double d, float *ret);

/* Reads and parses a whole JSON file of at most 64 MiB; the caller deletes *ret. */
int kvd_sc_read_json(const char *path, cJSON **ret, char *err, size_t errlen);

#endif
