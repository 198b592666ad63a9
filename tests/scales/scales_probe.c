/* scales_probe.c - loads FP8 scales the way the daemon does and prints them.
 *
 *   scales_probe SCALES_JSON NUM_LAYERS DTYPE
 *
 * SCALES_JSON is a pool's "scales" object (e.g. '{"source":"json",
 * "path":"s.json"}'), or "null" for the default.  On success prints one JSON
 * object {"source","path","num_layers","k":[..],"v":[..],"k_min","k_max",
 * "v_min","v_max","warn_unscaled"} with floats in %.17g (the float32 value exactly, as a double)
 * and exits 0; on failure prints "error <errno name>: <message>" on stderr
 * and exits 1; bad usage exits 2.  Used by tests/scales/test_scales.py. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "scales.h"

static void print_array(const char *name, const float *a, uint32_t n)
{
        printf("\"%s\":[", name);
        for (uint32_t i = 0; i < n; i++)
                printf("%s%.17g", i ? "," : "", (double)a[i]);
        printf("],");
}

int main(int argc, char **argv)
{
        struct kvd_scales s;
        cJSON *cfg = NULL;
        char err[1024] = "";
        char *end;
        unsigned long layers;
        int r;

        if (argc != 4) {
                fprintf(stderr, "usage: %s SCALES_JSON NUM_LAYERS DTYPE\n", argv[0]);
                return 2;
        }
        if (strcmp(argv[1], "null")) {
                cfg = cJSON_Parse(argv[1]);
                if (!cfg) {
                        fprintf(stderr, "scales_probe: SCALES_JSON is not valid JSON: %s\n", argv[1]);
                        return 2;
                }
        }
        errno = 0;
        layers = strtoul(argv[2], &end, 10);
        if (errno || *end || end == argv[2] || layers > UINT32_MAX) {
                fprintf(stderr, "scales_probe: NUM_LAYERS: expected a number, got %s\n", argv[2]);
                cJSON_Delete(cfg);
                return 2;
        }
        r = kvd_scales_load(cfg, (uint32_t)layers, argv[3], &s, err, sizeof err);
        cJSON_Delete(cfg);
        if (r) {
                fprintf(stderr, "error %s: %s\n", strerrorname_np(-r) ? strerrorname_np(-r) : "?", err);
                return 1;
        }
        printf("{\"source\":\"%s\",\"path\":", s.source);
        /* paths in tests hold no quotes or backslashes, but escape anyway */
        putchar('"');
        for (const char *p = s.path; *p; p++) {
                if (*p == '"' || *p == '\\')
                        putchar('\\');
                putchar(*p);
        }
        printf("\",\"num_layers\":%u,", s.num_layers);
        print_array("k", s.k, s.num_layers);
        print_array("v", s.v, s.num_layers);
        printf("\"k_min\":%.17g,\"k_max\":%.17g,\"v_min\":%.17g,\"v_max\":%.17g,\"warn_unscaled\":%d}\n",
               (double)s.k_min, (double)s.k_max, (double)s.v_min, (double)s.v_max, s.warn_unscaled);
        kvd_scales_fini(&s);
        return 0;
}
