/* test_config.c - kvpoold configuration: JSON file, --pool, capacities,
 * precedence, and that every error names its key. */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include "config.h"
#include "log.h"

static char path[128];
static char err[1024];

/* Writes text to a per-test config file and returns its path. */
static const char *write_cfg(const char *text)
{
        static int n;
        FILE      *f;

        snprintf(path, sizeof(path), "/tmp/kvtest-cfg-%d-%d.json", (int)getpid(), n++);
        f = fopen(path, "w");
        cr_assert(f);
        fputs(text, f);
        fclose(f);
        return path;
}

static void cleanup(void)
{
        if (path[0])
                unlink(path);
}

/* Parses argv (NULL-terminated after argv[0] "kvpoold"). */
static int parse(struct kvd_config *c, ...)
{
        char   *argv[32];
        int     argc = 0;
        va_list ap;

        argv[argc++] = "kvpoold";
        va_start(ap, c);
        for (char *a; (a = va_arg(ap, char *)) && argc < 31;)
                argv[argc++] = a;
        va_end(ap);
        argv[argc] = NULL;
        err[0] = 0;
        return kvd_config_parse(argc, argv, c, err, sizeof(err));
}

/* Parses a config file; returns the result, err holds the message. */
static int parse_file(struct kvd_config *c, const char *text)
{
        return parse(c, "--config", write_cfg(text), NULL);
}

/* The last error (err) holds every fragment of the NULL-terminated list;
 * what names the input it was for. */
static void expect_err(const char *what, ...)
{
        va_list ap;
        const char *frag;

        va_start(ap, what);
        while ((frag = va_arg(ap, const char *)) != NULL)
                cr_assert(strstr(err, frag), "%s: error lacks \"%s\": %s", what, frag, err);
        va_end(ap);
}

#define POOL_OK "{\"name\": \"p\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, \"head_dim\": 64, " \
                "\"page_size\": 16, \"capacity\": \"8MiB\"}"

TestSuite(config, .fini = cleanup);

Test(config, valid_file_every_key)
{
        struct kvd_config c;
        int r = parse_file(&c,
                "{\"socket\": \"ipc:///tmp/kvtest-x.sock\", \"events\": \"ipc:///tmp/kvtest-x-ev.sock\",\n"
                " \"metrics\": \"127.0.0.1:19464\", \"log_level\": \"debug\",\n"
                " \"pools\": [\n"
                "  {\"name\": \"llama\", \"dtype\": \"fp8_e4m3\", \"layers\": 32, \"kv_heads\": 8, \"head_dim\": 128,\n"
                "   \"page_size\": 16, \"capacity\": \"64MiB\", \"backend\": \"host\", \"device\": 0,\n"
                "   \"scales\": {\"source\": \"constant\", \"k\": 0.5, \"v\": 0.25},\n"
                "   \"pressure\": {\"low\": 0.05, \"high\": 0.3}},\n"
                "  {\"name\": \"small\", \"dtype\": \"fp4_e2m1\", \"layers\": 2, \"kv_heads\": 2, \"head_dim\": 64,\n"
                "   \"page_size\": 32, \"capacity\": 4194304}\n"
                " ]}\n");
        cr_assert_eq(r, 0, "%s", err);
        cr_assert_str_eq(c.socket_url, "ipc:///tmp/kvtest-x.sock");
        cr_assert_str_eq(c.events_url, "ipc:///tmp/kvtest-x-ev.sock");
        cr_assert_str_eq(c.metrics_addr, "127.0.0.1:19464");
        cr_assert_eq(c.log_level, KVD_LOG_DEBUG);
        cr_assert_eq(c.num_pools, 2);
        cr_assert_eq(c.default_pool, 0);
        cr_assert_str_eq(c.pools[0].name, "llama");
        cr_assert_eq(c.pools[0].geom.dtype, KVC_DTYPE_FP8_E4M3);
        cr_assert_eq(c.pools[0].geom.num_layers, 32);
        cr_assert_eq(c.pools[0].geom.kv_heads, 8);
        cr_assert_eq(c.pools[0].geom.head_dim, 128);
        cr_assert_eq(c.pools[0].geom.page_size, 16);
        cr_assert_eq(c.pools[0].capacity_bytes, 64ull << 20);
        cr_assert_str_eq(c.pools[0].backend, "host");
        cr_assert_float_eq(c.pools[0].pressure_low, 0.05, 1e-12);
        cr_assert_float_eq(c.pools[0].pressure_high, 0.3, 1e-12);
        cr_assert_not_null(c.pools[0].scales_cfg);
        cr_assert_str_eq(cJSON_GetObjectItem(c.pools[0].scales_cfg, "source")->valuestring, "constant");
        cr_assert_eq(c.pools[1].geom.dtype, KVC_DTYPE_FP4_E2M1);
        cr_assert_eq(c.pools[1].capacity_bytes, 4194304);
        cr_assert_str_eq(c.pools[1].backend, "auto");
        cr_assert_float_eq(c.pools[1].pressure_low, 0.1, 1e-12);
        cr_assert_float_eq(c.pools[1].pressure_high, 0.2, 1e-12);
        cr_assert_eq(kvd_config_load_scales(&c, NULL, NULL, err, sizeof(err)), 0, "%s", err);
        kvd_config_fini(&c);
}

/* kvpoold loads every pool's scales once, before making any pool: the
 * array has a loaded entry per pool; a bad scales file of a later pool
 * fails the whole load, naming that pool, and leaves *ret alone. */
Test(config, load_scales_of_every_pool)
{
        struct kvd_config  c;
        struct kvd_scales  other, *sc = NULL, *const keep = &other;

        cr_assert_eq(parse_file(&c, "{\"pools\": [" POOL_OK ", {\"name\": \"q\", \"dtype\": \"fp8_e5m2\", "
                                    "\"layers\": 3, \"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, "
                                    "\"capacity\": \"8MiB\", \"scales\": {\"source\": \"constant\", \"k\": 2, "
                                    "\"v\": 4}}]}"),
                     0, "%s", err);
        cr_assert_eq(kvd_config_load_scales(&c, NULL, &sc, err, sizeof(err)), 0, "%s", err);
        cr_assert_not_null(sc);
        cr_assert_eq(sc[0].num_layers, 2);
        cr_assert(sc[0].k[1] == 1.0f && sc[0].v[1] == 1.0f);
        cr_assert_eq(sc[1].num_layers, 3);
        cr_assert(sc[1].k[2] == 2.0f && sc[1].v[2] == 4.0f);
        for (uint32_t i = 0; i < c.num_pools; i++)
                kvd_scales_fini(&sc[i]);
        free(sc);
        kvd_config_fini(&c);

        cr_assert_eq(parse_file(&c, "{\"pools\": [" POOL_OK ", {\"name\": \"q\", \"dtype\": \"fp8_e4m3\", "
                                    "\"layers\": 2, \"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, "
                                    "\"capacity\": \"8MiB\", \"scales\": {\"source\": \"json\", "
                                    "\"path\": \"/nonexistent/kvtest-scales.json\"}}]}"),
                     0, "%s", err);
        sc = keep;
        cr_assert_neq(kvd_config_load_scales(&c, NULL, &sc, err, sizeof(err)), 0, "a missing scales file loaded");
        cr_assert(strstr(err, "pool q") && strstr(err, "/nonexistent/kvtest-scales.json"), "%s", err);
        cr_assert_eq(sc, keep, "*ret changed on failure");
        kvd_config_fini(&c);
}

/* Each bad file must fail, and the message must contain every fragment. */
static void expect_file_error(const char *text, const char *frag1, const char *frag2)
{
        struct kvd_config c;
        int r = parse_file(&c, text);

        cr_assert_neq(r, 0, "accepted: %s", text);
        expect_err(text, path, frag1, frag2, NULL);
}

Test(config, errors_name_the_key)
{
        expect_file_error("{\"sockett\": \"ipc:///x\"}", "sockett", "unknown key");
        expect_file_error("{\"pools\": [" POOL_OK ", {\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, "
                          "\"kv_heads\": 2, \"head_dim\": \"128\", \"page_size\": 16, \"capacity\": \"8MiB\"}]}",
                          "pools[1].head_dim", "integer");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 100, \"page_size\": 16, \"capacity\": \"8MiB\"}]}",
                          "pools[0].head_dim", "100");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"fp9\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}",
                          "pools[0].dtype", "fp9");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dims\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}",
                          "pools[0].head_dims", "unknown key");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16}]}", "pools[0].capacity", "missing");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2.5, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}", "pools[0].layers", NULL);
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2000, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}", "pools[0].layers", "2000");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8 parsecs\"}]}",
                          "pools[0].capacity", "8 parsecs");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"90%\", \"backend\": \"host\"}]}",
                          "pools[0].capacity", "fraction");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", \"backend\": \"tpu\"}]}",
                          "pools[0].backend", "tpu");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", "
                          "\"pressure\": {\"low\": 0.1, \"hi\": 0.2}}]}", "pools[0].pressure.hi", NULL);
        expect_file_error("{\"pools\": [{\"name\": \"a/b\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}", "pools[0].name", "a/b");
        /* a character that '%c' would print invisibly or in half is named by its value */
        expect_file_error("{\"pools\": [{\"name\": \"a\\u001bb\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}", "pools[0].name",
                          "byte 0x1b at offset 1");
        expect_file_error("{\"pools\": [{\"name\": \"p\xc3\xb6" "ol\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}", "pools[0].name",
                          "byte 0xc3 at offset 1");
        expect_file_error("{\"pools\": [" POOL_OK ", " POOL_OK "]}", "\"p\"", "twice");
        expect_file_error("{\"pools\": {\"name\": \"p\"}}", "pools", "array");
        expect_file_error("{\"log_level\": \"loud\"}", "log_level", NULL);
        /* a group the file names that does not exist: the file and the key */
        expect_file_error("{\"group\": \"kvtest-no-such-group-xyz\"}", ": group: no such group",
                          "kvtest-no-such-group-xyz");
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 32, \"kv_heads\": 8, "
                          "\"head_dim\": 128, \"page_size\": 16, \"capacity\": \"1KiB\"}]}",
                          "pools[0].capacity", "2 MiB");
}

/* cJSON keeps a repeated key and stops at the end of the value: both would
 * let a file say one thing and the daemon do another. */
Test(config, repeated_keys_and_trailing_text)
{
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": 0.5, \"capacity\": 8388608}]}",
                          "pools[0]: key \"capacity\" given twice", NULL);
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", "
                          "\"scales\": {\"source\": \"constant\", \"k\": 0.5, \"k\": 2}}]}",
                          "pools[0].scales: key \"k\" given twice", NULL);
        expect_file_error("{\"socket\": \"ipc:///x\", \"socket\": \"ipc:///y\"}",
                          "the top level: key \"socket\" given twice", NULL);
        expect_file_error("{\"pools\": [" POOL_OK "]}\n{\"pools\": 5}", "line 2", "text after the JSON object");
        expect_file_error("{\"pools\": [" POOL_OK "]}, garbage", "text after", NULL);
        expect_file_error("{\"pools\": []}", "pools: an empty list", NULL);
        expect_file_error("{\"socket\": \"bogus://x\"}", ": socket: \"bogus://x\"", "expected an nng URL");
        /* STATUS echoes configured strings (a scale file's path) as JSON:
         * the file must be UTF-8, as JSON text is */
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", "
                          "\"scales\": {\"source\": \"json\", \"path\": \"/tmp/sc\xffle.json\"}}]}",
                          "is not UTF-8", "0xff");
        /* cJSON ends a string at \u0000: "ipc:///tmp/a.sock\u0000.x" would
         * listen on /tmp/a.sock; an escaped backslash before u0000 is text */
        expect_file_error("{\"pools\": [" POOL_OK "],\n \"socket\": \"ipc:///tmp/a.sock\\u0000.x\"}",
                          "line 2: \\u0000 in a string", NULL);
        expect_file_error("{\"pools\": [{\"name\": \"p0\\u0000extra\", \"dtype\": \"bf16\", \"layers\": 2, "
                          "\"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}",
                          "\\u0000 in a string", NULL);
        struct kvd_config c;
        cr_assert_eq(parse_file(&c, "{\"pools\": [" POOL_OK "], \"socket\": \"ipc:///tmp/a\\\\u0000\"}"), 0,
                     "an escaped backslash, then u0000: %s", err);
        cr_assert_str_eq(c.socket_url, "ipc:///tmp/a\\u0000");
        kvd_config_fini(&c);
        cr_assert_eq(parse_file(&c, "{\"pools\": [" POOL_OK "]}  \n\t\n"), 0, "trailing whitespace: %s", err);
        kvd_config_fini(&c);
}

Test(config, pool_arg_key_twice)
{
        struct kvd_pool_spec sp;

        cr_assert_eq(kvd_config_parse_pool_arg("name=a,dtype=bf16,layers=2,kv_heads=2,head_dim=64,page_size=16,"
                                               "capacity=8MiB,capacity=16MiB,backend=host", &sp, err, sizeof(err)),
                     -EINVAL, "accepted a repeated key");
        cr_assert(strstr(err, "key \"capacity\" given twice"), "%s", err);
}

/* An unknown --pool key is named, with every key there is. */
Test(config, pool_arg_unknown_key)
{
        struct kvd_pool_spec sp;

        cr_assert_eq(kvd_config_parse_pool_arg("name=a,dtype=bf16,colour=red", &sp, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "unknown key \"colour\" (expected name, dtype, layers, kv_heads, head_dim, page_size, "
                              "capacity, backend, device, tp_size, devices)"),
                  "%s", err);
}

/* A page table holds at most 2^30 pages (page ids stay far from the u32
 * sentinels): a capacity holding more pages of a tiny geometry (18 bytes a
 * page here) is refused at configuration time, not after the daemon has
 * reserved the memory. */
Test(config, more_pages_than_a_page_table_holds)
{
        struct kvd_pool_spec s;

        cr_assert_eq(kvd_config_parse_pool_arg("name=a,dtype=fp4_e2m1,layers=1,kv_heads=1,head_dim=16,page_size=1,"
                                               "capacity=20GiB,backend=host", &s, err, sizeof(err)), -EINVAL,
                     "accepted more than 2^30 pages");
        cr_assert(strstr(err, "capacity") && strstr(err, "pages"), "%s", err);
        /* at the limit: 18 GiB hold exactly 2^30 pages of 18 bytes */
        cr_assert_eq(kvd_config_parse_pool_arg("name=a,dtype=fp4_e2m1,layers=1,kv_heads=1,head_dim=16,page_size=1,"
                                               "capacity=18GiB,backend=host", &s, err, sizeof(err)), 0, "%s", err);
        kvd_pool_spec_fini(&s);
}

/* JSON allows a key twice and cJSON keeps both: a second "pools" must not
 * silently replace (and leak) the first, nor leave the count of the first
 * over the second's shorter array. */
Test(config, pools_key_twice)
{
        expect_file_error("{\"pools\": [" POOL_OK "], \"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, "
                          "\"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}]}",
                          "pools", "twice");
        expect_file_error("{\"pools\": [" POOL_OK ", {\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, "
                          "\"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}, "
                          "{\"name\": \"r\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, \"head_dim\": 64, "
                          "\"page_size\": 16, \"capacity\": \"8MiB\"}], \"pools\": [{\"name\": \"s\"}]}",
                          "pools", "twice");
}

Test(config, syntax_error_names_line)
{
        expect_file_error("{\n  \"socket\": \"ipc:///x\",\n  \"pools\": [ oops ]\n}\n", "line 3", "syntax");
}

Test(config, missing_file)
{
        struct kvd_config c;

        cr_assert_eq(parse(&c, "--config", "/nonexistent/kvpoold.json", NULL), -ENOENT);
        cr_assert(strstr(err, "/nonexistent/kvpoold.json"), "%s", err);
}

/* A config path that names a FIFO (or a directory) is refused at once: a
 * FIFO used to block the daemon, and --check-config, until a writer came. */
Test(config, not_a_regular_file)
{
        struct kvd_config c;
        char fifo[64];

        snprintf(fifo, sizeof(fifo), "/tmp/kvtest-fifo-%d", (int)getpid());
        unlink(fifo);
        cr_assert_eq(mkfifo(fifo, 0600), 0);
        const int r = parse(&c, "--config", fifo, "--check-config", NULL);
        unlink(fifo);
        cr_assert_eq(r, -EINVAL, "%d: %s", r, err);
        expect_err("a FIFO", fifo, "not a regular file", NULL);
        cr_assert_eq(parse(&c, "--config", "/tmp", NULL), -EINVAL, "%s", err);
        expect_err("a directory", "/tmp", "not a regular file", NULL);
}

Test(config, pool_arg)
{
        struct kvd_pool_spec s;
        int                  r;

        cr_assert_eq(kvd_config_parse_pool_arg("name=a,dtype=fp8_e5m2,layers=4,kv_heads=2,head_dim=256,"
                                               "page_size=8,capacity=1GiB,backend=cuda,device=3",
                                               &s, err, sizeof(err)), 0, "%s", err);
        cr_assert_str_eq(s.name, "a");
        cr_assert_eq(s.geom.dtype, KVC_DTYPE_FP8_E5M2);
        cr_assert_eq(s.geom.num_layers, 4);
        cr_assert_eq(s.geom.kv_heads, 2);
        cr_assert_eq(s.geom.head_dim, 256);
        cr_assert_eq(s.geom.page_size, 8);
        cr_assert_eq(s.capacity_bytes, 1ull << 30);
        cr_assert_str_eq(s.backend, "cuda");
        cr_assert_eq(s.device, 3);
        kvd_pool_spec_fini(&s);

        /* A fraction of free GPU memory needs a build with CUDA. */
        r = kvd_config_parse_pool_arg("name=b,dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=16,capacity=0.9",
                                      &s, err, sizeof(err));
        if (kvd_backend_cuda) {
                cr_assert_eq(r, 0, "%s", err);
                cr_assert_float_eq(s.capacity_fraction, 0.9, 1e-12);
                cr_assert_eq(s.capacity_bytes, 0);
                cr_assert_str_eq(s.backend, "auto");
        } else {
                cr_assert_eq(r, -EINVAL);
                cr_assert(strstr(err, "without CUDA"), "%s", err);
        }

        /* a head_dim CUDA pools do not take, with backend cuda: refused
         * here, not only when the pool is made (auto may fall back to host) */
        cr_assert_eq(kvd_config_parse_pool_arg("name=c,dtype=bf16,layers=2,kv_heads=2,head_dim=80,page_size=16,"
                                               "capacity=8MiB,backend=cuda", &s, err, sizeof(err)), -EINVAL);
        cr_assert(strstr(err, "head_dim: 80, but CUDA pools support head_dim 64, 128 or 256"), "%s", err);
        cr_assert_eq(kvd_config_parse_pool_arg("name=c,dtype=bf16,layers=2,kv_heads=2,head_dim=80,page_size=16,"
                                               "capacity=8MiB,backend=auto", &s, err, sizeof(err)), 0, "%s", err);
        kvd_pool_spec_fini(&s);

        struct { const char *arg, *frag; } bad[] = {
                { "name=a,dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=16,capacity=1G,colour=red", "colour" },
                { "name=a,dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=16", "capacity" },
                { "name=a,dtype=bf16,layers=x,kv_heads=2,head_dim=64,page_size=16,capacity=1G", "layers" },
                { "name=a,dtype=int8,layers=4,kv_heads=2,head_dim=64,page_size=16,capacity=1G", "int8" },
                { "name=a,dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=16,capacity=90%,backend=host", "fraction" },
                { "name=a,dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=16,capacity=1G,backend=gpu", "gpu" },
                { "name=a,dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=0,capacity=1G", "page_size" },
                { "name=a,dtype=bf16,layers=4,kv_heads=999,head_dim=64,page_size=16,capacity=1G", "kv_heads" },
                { "dtype=bf16,layers=4,kv_heads=2,head_dim=64,page_size=16,capacity=1G", "name" },
                { "name=a,dtype=bf16,layers4", "layers4" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = 0;
                cr_assert_eq(kvd_config_parse_pool_arg(bad[i].arg, &s, err, sizeof(err)), -EINVAL, "accepted %s",
                             bad[i].arg);
                expect_err(bad[i].arg, bad[i].frag, NULL);
        }
}

Test(config, capacities)
{
        struct { const char *s; uint64_t bytes; double frac; } ok[] = {
                { "8GiB", 8ull << 30, 0 },   { "8Gi", 8ull << 30, 0 },   { "512MiB", 512ull << 20, 0 },
                { "512Mi", 512ull << 20, 0 }, { "4KiB", 4096, 0 },       { "4Ki", 4096, 0 },
                { "1G", 1000000000ull, 0 },   { "1GB", 1000000000ull, 0 }, { "3M", 3000000ull, 0 },
                { "2K", 2000, 0 },            { "1073741824", 1ull << 30, 0 }, { "1.5GiB", 3ull << 29, 0 },
                { "1TiB", 1ull << 40, 0 },    { "0.9", 0, 0.9 },          { "90%", 0, 0.9 },
                /* above INT64_MAX: llround would overflow */
                { "10000000T", 10000000000000000000ull, 0 }, { "18000000TB", 18000000000000000000ull, 0 },
                { "100%", 0, 1.0 },           { "0.25", 0, 0.25 },        { "1.0", 0, 1.0 },
        };
        const char *bad[] = { "", "abc", "-1", "0", "0%", "150%", "2.0", "12X", "8 GiBs", "1e400", "%", "0.0" };

        for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
                uint64_t b = 77;
                double   f = 77;

                cr_assert_eq(kvd_config_parse_capacity(ok[i].s, &b, &f, err, sizeof(err)), 0, "%s: %s", ok[i].s, err);
                cr_assert_eq(b, ok[i].bytes, "%s: %llu bytes", ok[i].s, (unsigned long long)b);
                cr_assert_float_eq(f, ok[i].frac, 1e-12, "%s: fraction %g", ok[i].s, f);
        }
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                uint64_t b = 77;
                double   f = 77;

                cr_assert_eq(kvd_config_parse_capacity(bad[i], &b, &f, err, sizeof(err)), -EINVAL, "accepted \"%s\"",
                             bad[i]);
                cr_assert_eq(b, 77, "out-parameter touched on failure");
                cr_assert(strstr(err, "capacity"), "%s", err);
        }
}

Test(config, json_capacity_forms)
{
        struct kvd_config c;
        const char *fr[] = { "0.5", "\"90%\"" };
        const double want[] = { 0.5, 0.9 };
        char text[512];

        cr_assert_eq(parse_file(&c, "{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, "
                                    "\"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, \"capacity\": 2097152}]}"),
                     0, "%s", err);
        cr_assert_eq(c.pools[0].capacity_bytes, 2097152);
        kvd_config_fini(&c);
        /* fractions: a JSON number below 1 or a percentage string; they need
         * a CUDA build (host pools take bytes) */
        for (int i = 0; i < 2; i++) {
                int r;

                snprintf(text, sizeof(text), "{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, "
                         "\"kv_heads\": 2, \"head_dim\": 64, \"page_size\": 16, \"capacity\": %s}]}", fr[i]);
                r = parse_file(&c, text);
                if (kvd_backend_cuda) {
                        cr_assert_eq(r, 0, "%s", err);
                        cr_assert_float_eq(c.pools[0].capacity_fraction, want[i], 1e-12);
                        kvd_config_fini(&c);
                } else {
                        cr_assert_neq(r, 0);
                        cr_assert(strstr(err, "pools[0].capacity") && strstr(err, "without CUDA"), "%s", err);
                }
        }
        expect_file_error("{\"pools\": [{\"name\": \"q\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 2, "
                          "\"head_dim\": 64, \"page_size\": 16, \"capacity\": true}]}", "pools[0].capacity", "boolean");
}

Test(config, default_pool_and_defaults)
{
        struct kvd_config c;

        unsetenv("KVPOOL_SOCKET");
        cr_assert_eq(parse(&c, NULL), 0, "%s", err);
        cr_assert_eq(c.default_pool, 1);
        cr_assert_eq(c.num_pools, 1);
        cr_assert_str_eq(c.pools[0].name, "default");
        cr_assert_eq(c.pools[0].geom.dtype, KVC_DTYPE_FP8_E4M3);
        cr_assert_eq(c.pools[0].geom.num_layers, 32);
        cr_assert_eq(c.pools[0].geom.kv_heads, 8);
        cr_assert_eq(c.pools[0].geom.head_dim, 128);
        cr_assert_eq(c.pools[0].geom.page_size, 16);
        cr_assert_eq(c.pools[0].capacity_bytes, 256ull << 20);
        cr_assert_str_eq(c.pools[0].backend, "auto");
        cr_assert_str_eq(c.socket_url, "ipc:///run/kvpool/kvpool.sock");
        cr_assert_str_eq(c.events_url, "ipc:///run/kvpool/events.sock");
        cr_assert_str_eq(c.metrics_addr, "127.0.0.1:9464");
        cr_assert_eq(c.log_level, KVD_LOG_INFO);
        kvd_config_fini(&c);
}

Test(config, precedence)
{
        struct kvd_config c;
        const char *f = write_cfg("{\"socket\": \"ipc:///tmp/kvtest-file.sock\", \"metrics\": \"none\", "
                                  "\"log_level\": \"warning\", \"pools\": [" POOL_OK "]}");

        /* environment < file < command line */
        setenv("KVPOOL_SOCKET", "ipc:///tmp/kvtest-env.sock", 1);
        cr_assert_eq(parse(&c, NULL), 0, "%s", err);
        cr_assert_str_eq(c.socket_url, "ipc:///tmp/kvtest-env.sock");
        cr_assert_str_eq(c.events_url, "ipc:///tmp/events.sock");
        kvd_config_fini(&c);

        cr_assert_eq(parse(&c, "--config", f, NULL), 0, "%s", err);
        cr_assert_str_eq(c.socket_url, "ipc:///tmp/kvtest-file.sock");
        cr_assert_null(c.metrics_addr);
        cr_assert_eq(c.log_level, KVD_LOG_WARNING);
        cr_assert_eq(c.num_pools, 1);
        kvd_config_fini(&c);

        cr_assert_eq(parse(&c, "--config", f, "--socket=ipc:///tmp/kvtest-cli.sock", "--events", "none",
                           "--metrics", "127.0.0.1:1", "--log-level", "debug",
                           "--pool", "name=z,dtype=fp16,layers=1,kv_heads=1,head_dim=64,page_size=4,capacity=2MiB",
                           NULL), 0, "%s", err);
        cr_assert_str_eq(c.socket_url, "ipc:///tmp/kvtest-cli.sock");
        cr_assert_null(c.events_url);
        cr_assert_str_eq(c.metrics_addr, "127.0.0.1:1");
        cr_assert_eq(c.log_level, KVD_LOG_DEBUG);
        cr_assert_eq(c.num_pools, 2);
        cr_assert_str_eq(c.pools[0].name, "p");
        cr_assert_str_eq(c.pools[1].name, "z");
        kvd_config_fini(&c);

        /* a --pool with the name of a file pool is a duplicate */
        cr_assert_neq(parse(&c, "--config", f, "--pool",
                            "name=p,dtype=fp16,layers=1,kv_heads=1,head_dim=64,page_size=4,capacity=2MiB", NULL), 0);
        cr_assert(strstr(err, "\"p\""), "%s", err);
        unsetenv("KVPOOL_SOCKET");
}

Test(config, command_line_errors)
{
        struct kvd_config c;

        cr_assert_neq(parse(&c, "--sockett", "x", NULL), 0);
        cr_assert(strstr(err, "--sockett"), "%s", err);
        cr_assert_neq(parse(&c, "--socket", NULL), 0);
        cr_assert(strstr(err, "--socket"), "%s", err);
        cr_assert_neq(parse(&c, "--log-level", "chatty", NULL), 0);
        cr_assert(strstr(err, "--log-level"), "%s", err);
        cr_assert_neq(parse(&c, "--group", "kvtest-no-such-group-xyz", NULL), 0);
        cr_assert(strstr(err, "kvtest-no-such-group-xyz"), "%s", err);
        cr_assert_neq(parse(&c, "--socket", "/run/kvpool.sock", NULL), 0);
        cr_assert(strstr(err, "URL"), "%s", err);
        /* what the listeners would refuse after the pools are made is
         * refused here (and so by --check-config) */
        const char *bad[][3] = {
                { "--socket", "bogus://x", "expected an nng URL such as ipc://PATH or tcp://HOST:PORT" },
                { "--socket", "ipc://", "nothing after ://" },
                { "--socket", "/run/kvpool.sock", "\"/run/kvpool.sock\": expected an nng URL" },
                { "--socket", "", "\"\": expected an nng URL" },
                { "--socket", "tcp://127.0.0.1:99999", "port must be a number in 0..65535" },
                { "--events", "zz://q", "--events" },
                { "--metrics", "not-an-addr", "expected HOST:PORT" },
                { "--metrics", "127.0.0.1:99999", "port must be a number in 1..65535" },
        };
        char long_ipc[200], ok_ipc[200];
        /* a Unix socket path holds 107 bytes: 108 is refused by name, 107 kept */
        snprintf(long_ipc, sizeof(long_ipc), "ipc:///tmp/%0*d", 108 - 5, 0);
        snprintf(ok_ipc, sizeof(ok_ipc), "ipc:///tmp/%0*d", 107 - 5, 0);
        const char *bad2[][3] = {
                { "--socket", long_ipc, "the path is 108 bytes, more than the 107 a Unix socket address holds" },
                { "--events", long_ipc, "--events" },
        };
        for (unsigned i = 0; i < sizeof(bad2) / sizeof(bad2[0]); i++) {
                cr_assert_neq(parse(&c, bad2[i][0], bad2[i][1], "--check-config", NULL), 0, "%s %s accepted",
                              bad2[i][0], bad2[i][1]);
                expect_err(bad2[i][1], bad2[i][0], bad2[i][2], NULL);
        }
        cr_assert_eq(parse(&c, "--socket", ok_ipc, "--check-config", NULL), 0, "%s", err);
        kvd_config_fini(&c);
        /* the event socket at the control socket's address: refused before
         * any pool is made */
        cr_assert_neq(parse(&c, "--socket", "ipc:///tmp/kv-same.sock", "--events", "ipc:///tmp/kv-same.sock",
                            "--check-config", NULL), 0);
        expect_err("events = socket", "--events", "the control socket's address too", "--socket", NULL);
        for (unsigned i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                cr_assert_neq(parse(&c, bad[i][0], bad[i][1], "--check-config", NULL), 0, "%s %s accepted",
                              bad[i][0], bad[i][1]);
                char what[256];

                snprintf(what, sizeof(what), "%s %s", bad[i][0], bad[i][1]);
                expect_err(what, bad[i][0], bad[i][2], NULL);
        }
        cr_assert_eq(parse(&c, "--socket", "tcp://127.0.0.1:5555", "--events", "none", "--metrics", "[::1]:9464",
                           NULL), 0, "%s", err);
        kvd_config_fini(&c);
        cr_assert_neq(parse(&c, "--socket", "ipc:///tmp/kv\xc3\x28.sock", NULL), 0);
        cr_assert(strstr(err, "--socket") && strstr(err, "not valid UTF-8"), "%s", err);
        cr_assert_eq(parse(&c, "--socket", "ipc:///tmp/kv\xc3\xa9.sock", "--events", "none", NULL), 0, "%s", err);
        kvd_config_fini(&c);
        /* what kvpoold could listen on before the check stays accepted */
        const char *good[] = { "abstract://kvpool", "inproc://x", "ws://127.0.0.1:5555", "tcp://127.0.0.1:0" };
        for (unsigned i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
                cr_assert_eq(parse(&c, "--socket", good[i], "--events", "none", NULL), 0, "%s: %s", good[i], err);
                kvd_config_fini(&c);
        }
        cr_assert_eq(parse(&c, "--help", NULL), 0);
        cr_assert_eq(c.help, 1);
        kvd_config_fini(&c);
        cr_assert_eq(parse(&c, "--group", "root", "--check-config", NULL), 0, "%s", err);
        cr_assert_eq(c.check_config, 1);
        cr_assert_eq(c.gid, 0);
        cr_assert_eq(c.pools[0].has_group, 1);
        kvd_config_fini(&c);
}

Test(config, log_levels)
{
        int l = -1;

        cr_assert_eq(kvd_log_parse_level("DEBUG", &l), 0);
        cr_assert_eq(l, KVD_LOG_DEBUG);
        cr_assert_eq(kvd_log_parse_level("warn", &l), 0);
        cr_assert_eq(l, KVD_LOG_WARNING);
        cr_assert_eq(kvd_log_parse_level("error", &l), 0);
        cr_assert_eq(l, KVD_LOG_ERR);
        cr_assert_eq(kvd_log_parse_level("loud", &l), -EINVAL);
        cr_assert_eq(l, KVD_LOG_ERR, "untouched on failure");
        cr_assert_eq(kvd_log_ret(KVD_LOG_DEBUG, -EXDEV, "not shown at info"), -EXDEV);
}

/* ---- several GPUs: tp_size and devices (issue 8) -------------------------- */

#include "scales.h"

/* A scaling-factor JSON (vLLM schema) of nranks ranks and 2 layers: rank r,
 * layer l has factor 0.01 * (r + 1) + 0.001 * l.  Path in buf. */
static const char *write_rank_file(char *buf, size_t len, int nranks)
{
        static int n;
        FILE      *f;

        snprintf(buf, len, "/tmp/kvtest-tpscales-%d-%d.json", (int)getpid(), n++);
        f = fopen(buf, "w");
        cr_assert(f);
        fprintf(f, "{\"model_type\": \"llama\", \"kv_cache\": {\"dtype\": \"float8_e4m3fn\", \"scaling_factor\": {");
        for (int r = 0; r < nranks; r++)
                fprintf(f, "%s\"%d\": {\"0\": %g, \"1\": %g}", r ? ", " : "", r, 0.01 * (r + 1), 0.01 * (r + 1) + 0.001);
        fprintf(f, "}}}\n");
        fclose(f);
        return buf;
}

static int parse_tp_file(struct kvd_config *c, const char *pool_extra, const char *scales_path)
{
        char text[2048];

        snprintf(text, sizeof(text),
                 "{\"pools\": [{\"name\": \"m\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 8, "
                 "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", \"backend\": \"host\"%s%s%s%s}]}",
                 pool_extra, scales_path ? ", \"scales\": {\"source\": \"json\", \"path\": \"" : "",
                 scales_path ? scales_path : "", scales_path ? "\"}" : "");
        return parse_file(c, text);
}

Test(config, tp_size_json_expands_per_rank)
{
        struct kvd_config c;
        char              sp[128];

        write_rank_file(sp, sizeof(sp), 2);
        cr_assert_eq(parse_tp_file(&c, ", \"tp_size\": 2", sp), 0, "%s", err);
        cr_assert_eq(c.num_pools, 2);
        for (uint32_t r = 0; r < 2; r++) {
                const struct kvd_pool_spec *s = &c.pools[r];
                const cJSON                *tr = cJSON_GetObjectItem(s->scales_cfg, "tp_rank");
                struct kvd_scales           sc;
                char                        name[32];

                snprintf(name, sizeof(name), "m.tp%u", r);
                cr_assert_str_eq(s->name, name);
                cr_assert_str_eq(s->spec_name, "m");
                cr_assert_eq(s->geom.kv_heads, 4, "kv_heads/tp_size");
                cr_assert_eq(s->geom.num_layers, 2);
                cr_assert_eq(s->geom.head_dim, 64);
                cr_assert_eq(s->geom.page_size, 16);
                cr_assert_eq(s->geom.dtype, KVC_DTYPE_FP8_E4M3);
                cr_assert_eq(s->capacity_bytes, 8u << 20, "capacity is per rank");
                cr_assert_eq(s->device, (int)r, "default devices 0..N-1");
                cr_assert_eq(s->tp_rank, r);
                cr_assert_eq(s->tp_size, 2);
                cr_assert_eq(s->num_devices, 0);
                cr_assert(cJSON_IsNumber(tr) && tr->valuedouble == r, "scales of rank %u", r);
                cr_assert_eq(kvd_scales_load(s->scales_cfg, 2, "fp8_e4m3", &sc, err, sizeof(err)), 0, "%s", err);
                cr_assert_float_eq(sc.k[0], 0.01f * (r + 1), 1e-7, "rank %u layer 0: %g", r, sc.k[0]);
                cr_assert_float_eq(sc.v[1], 0.01f * (r + 1) + 0.001f, 1e-7, "rank %u layer 1: %g", r, sc.v[1]);
                kvd_scales_fini(&sc);
        }
        cr_assert_neq(c.pools[0].scales_cfg, c.pools[1].scales_cfg, "each rank owns its scales object");
        cr_assert_eq(kvd_config_load_scales(&c, NULL, NULL, err, sizeof(err)), 0, "%s", err);
        kvd_config_fini(&c);
        unlink(sp);
}

Test(config, tp_size_pool_arg_and_devices)
{
        struct kvd_config    c;
        struct kvd_pool_spec s;

        cr_assert_eq(kvd_config_parse_pool_arg("name=g,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,"
                                               "capacity=8MiB,tp_size=2,devices=3:1", &s, err, sizeof(err)), 0, "%s", err);
        /* --pool gives the spec as written; kvd_config_parse expands it. */
        cr_assert_eq(s.tp_size, 2);
        cr_assert_eq(s.num_devices, 2);
        cr_assert_eq(s.devices[0], 3);
        cr_assert_eq(s.devices[1], 1);
        kvd_pool_spec_fini(&s);

        cr_assert_eq(parse(&c, "--pool", "name=plain,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=4MiB",
                           "--pool", "name=g,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=8MiB,tp_size=2,devices=3:1",
                           NULL), 0, "%s", err);
        cr_assert_eq(c.num_pools, 3);
        cr_assert_str_eq(c.pools[0].name, "plain");
        cr_assert_eq(c.pools[0].tp_size, 0);
        cr_assert_str_eq(c.pools[0].spec_name, "");
        cr_assert_eq(c.pools[0].geom.kv_heads, 4);
        cr_assert_str_eq(c.pools[1].name, "g.tp0");
        cr_assert_str_eq(c.pools[2].name, "g.tp1");
        cr_assert_eq(c.pools[1].device, 3);
        cr_assert_eq(c.pools[2].device, 1);
        cr_assert_eq(c.pools[1].geom.kv_heads, 2);
        cr_assert_eq(c.pools[2].tp_rank, 1);
        cr_assert_null(c.pools[1].scales_cfg, "constant scales stay unset");
        kvd_config_fini(&c);

        /* tp_size 1 is a single rank pool, still named .tp0. */
        cr_assert_eq(parse(&c, "--pool", "name=one,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=4MiB,tp_size=1",
                           NULL), 0, "%s", err);
        cr_assert_eq(c.num_pools, 1);
        cr_assert_str_eq(c.pools[0].name, "one.tp0");
        cr_assert_eq(c.pools[0].geom.kv_heads, 4);
        kvd_config_fini(&c);
}

Test(config, devices_without_tp_size)
{
        struct kvd_config c;
        char              sp[128];

        write_rank_file(sp, sizeof(sp), 1);
        /* Data-parallel: full kv_heads on each device, shared scales. */
        cr_assert_eq(parse_tp_file(&c, ", \"devices\": [1, 0]", sp), 0, "%s", err);
        cr_assert_eq(c.num_pools, 2);
        cr_assert_str_eq(c.pools[0].name, "m.dev1");
        cr_assert_str_eq(c.pools[1].name, "m.dev0");
        for (int i = 0; i < 2; i++) {
                cr_assert_eq(c.pools[i].device, 1 - i);
                cr_assert_eq(c.pools[i].geom.kv_heads, 8);
                cr_assert_eq(c.pools[i].tp_size, 0);
                cr_assert_str_eq(c.pools[i].spec_name, "m");
                cr_assert_null(cJSON_GetObjectItem(c.pools[i].scales_cfg, "tp_rank"));
        }
        cr_assert_eq(kvd_config_load_scales(&c, NULL, NULL, err, sizeof(err)), 0, "%s", err);
        kvd_config_fini(&c);
        cr_assert_eq(parse(&c, "--pool", "name=d,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=4MiB,devices=2",
                           NULL), 0, "%s", err);
        cr_assert_eq(c.num_pools, 1);
        cr_assert_str_eq(c.pools[0].name, "d.dev2");
        cr_assert_eq(c.pools[0].device, 2);
        kvd_config_fini(&c);
        unlink(sp);
}

Test(config, tp_errors_name_the_key)
{
        struct kvd_config c;
        char              one[128], two[128];
        struct { const char *extra; const char *frag1, *frag2; int scales; } bad[] = {
                { ", \"tp_size\": 0", "pools[0].tp_size", "got 0", 0 },
                { ", \"tp_size\": 65", "pools[0].tp_size", "1 to 64", 0 },
                { ", \"tp_size\": \"2\"", "pools[0].tp_size", "a string", 0 },
                { ", \"tp_size\": 3", "kv_heads", "not divisible by tp_size 3", 0 },
                { ", \"tp_size\": 2, \"devices\": [0, 1, 2]", "pools[0].devices", "3 devices for tp_size 2", 0 },
                { ", \"tp_size\": 2, \"devices\": [0]", "pools[0].devices", "1 device for tp_size 2", 0 },
                { ", \"devices\": [0, 0]", "pools[0].devices[1]", "listed twice", 0 },
                { ", \"devices\": [0, -1]", "pools[0].devices[1]", "-1 is not a CUDA ordinal", 0 },
                { ", \"devices\": [0.5]", "pools[0].devices[0]", "CUDA ordinal (a whole number >= 0), got 0.5", 0 },
                { ", \"tp_size\": -1", "pools[0].tp_size", "ranks, got -1", 0 },
                { ", \"tp_size\": 1.5", "pools[0].tp_size", "ranks, got 1.5", 0 },
                { ", \"device\": 1025", "pools[0].device", "1025 is not a CUDA ordinal (expected 0 to 1024)", 0 },
                { ", \"devices\": [1025]", "pools[0].devices[0]", "1025 is not a CUDA ordinal (expected 0 to 1024)", 0 },
                { ", \"devices\": []", "pools[0].devices", "non-empty array", 0 },
                { ", \"devices\": 1", "pools[0].devices", "array", 0 },
                { ", \"tp_size\": 2, \"device\": 1", "pools[0].device", "beside tp_size", 0 },
                { ", \"devices\": [1], \"device\": 1", "pools[0].device", "beside devices", 0 },
                /* a two-rank file is fine, a one-rank file is too short for tp_size 2 */
                { ", \"tp_size\": 2", "pools[0].tp_size", "has 1", 1 },
        };

        write_rank_file(one, sizeof(one), 1);
        write_rank_file(two, sizeof(two), 2);
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                int r = parse_tp_file(&c, bad[i].extra, bad[i].scales ? one : NULL);

                cr_assert_neq(r, 0, "accepted %s", bad[i].extra);
                expect_err(bad[i].extra, path, bad[i].frag1, bad[i].frag2, NULL);
        }
        /* An explicit tp_rank beside tp_size. */
        {
                char text[1024];

                snprintf(text, sizeof(text),
                         "{\"pools\": [{\"name\": \"m\", \"dtype\": \"fp8_e4m3\", \"layers\": 2, \"kv_heads\": 8, "
                         "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", \"tp_size\": 2, "
                         "\"scales\": {\"source\": \"json\", \"path\": \"%s\", \"tp_rank\": 1}}]}", two);
                cr_assert_neq(parse_file(&c, text), 0);
                cr_assert(strstr(err, "pools[0].scales.tp_rank") && strstr(err, "tp_size"), "%s", err);
        }
        /* A name that does not leave room for ".tp<r>". */
        cr_assert_neq(parse_file(&c, "{\"pools\": [{\"name\": \"abcdefghijabcdefghijabcdefghi\", \"dtype\": \"bf16\", "
                                     "\"layers\": 2, \"kv_heads\": 8, \"head_dim\": 64, \"page_size\": 16, "
                                     "\"capacity\": \"8MiB\", \"tp_size\": 2}]}"), 0);
        cr_assert(strstr(err, "pools[0].name") && strstr(err, "too long"), "%s", err);
        /* An expanded name clashing with another pool. */
        cr_assert_neq(parse_file(&c, "{\"pools\": [{\"name\": \"m.tp1\", \"dtype\": \"bf16\", \"layers\": 2, "
                                     "\"kv_heads\": 8, \"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\"}, "
                                     "{\"name\": \"m\", \"dtype\": \"bf16\", \"layers\": 2, \"kv_heads\": 8, "
                                     "\"head_dim\": 64, \"page_size\": 16, \"capacity\": \"8MiB\", \"tp_size\": 2}]}"), 0);
        cr_assert(strstr(err, "\"m.tp1\" is used twice") && strstr(err, "pools[0]") && strstr(err, "pools[1]"), "%s", err);
        unlink(one);
        unlink(two);
}

Test(config, tp_pool_arg_errors)
{
        struct kvd_pool_spec s;
        struct kvd_config    c;
        const char          *base = "name=g,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=8MiB,";
        struct { const char *tail, *frag1, *frag2; } bad[] = {
                { "tp_size=0", "tp_size", "got 0" },
                { "tp_size=65", "tp_size", "1 to 64" },
                { "tp_size=two", "tp_size", "\"two\"" },
                { "tp_size=8", "kv_heads", "not divisible by tp_size 8" },
                { "devices=0:x", "devices", "0:x" },
                { "devices=", "devices", "ordinals" },
                { "devices=-1", "devices", "-1 is not a CUDA ordinal" },
                { "device=1025", "--pool device", "1025 is not a CUDA ordinal (expected 0 to 1024)" },
                { "devices=1:1", "devices", "listed twice" },
                { "tp_size=2,devices=0:1:2", "devices", "3 devices for tp_size 2" },
                { "tp_size=2,device=1", "device", "beside tp_size" },
        };
        char arg[512];

        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                snprintf(arg, sizeof(arg), "%s%s", base, bad[i].tail);
                err[0] = 0;
                cr_assert_eq(kvd_config_parse_pool_arg(arg, &s, err, sizeof(err)), -EINVAL, "accepted %s", arg);
                expect_err(bad[i].tail, "--pool", bad[i].frag1, bad[i].frag2, NULL);
        }
        /* the last ordinal the check takes, in both spellings */
        snprintf(arg, sizeof(arg), "%sdevice=1024", base);
        cr_assert_eq(kvd_config_parse_pool_arg(arg, &s, err, sizeof(err)), 0, "%s", err);
        cr_assert_eq(s.device, 1024);
        kvd_pool_spec_fini(&s);
        cr_assert_eq(parse_tp_file(&c, ", \"device\": 1024", NULL), 0, "%s", err);
        cr_assert_eq(c.pools[0].device, 1024);
        kvd_config_fini(&c);
        /* 64 ranks plus one more pool is more than a daemon serves. */
        cr_assert_neq(parse(&c, "--pool", "name=a,dtype=bf16,layers=2,kv_heads=64,head_dim=64,page_size=16,capacity=8MiB,tp_size=64",
                            "--pool", "name=b,dtype=bf16,layers=2,kv_heads=4,head_dim=64,page_size=16,capacity=8MiB", NULL), 0);
        cr_assert(strstr(err, "65 pools after expanding tp_size"), "%s", err);
}
