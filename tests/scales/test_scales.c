/* test_scales.c - the constant source and a few JSON-file cases of
 * kvd_scales_load (the safetensors cases and most JSON cases are in
 * test_scales.py, which builds real checkpoints with the safetensors
 * library). */
#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "json_strict.h"
#include "scales.h"

static struct kvd_scales sentinel(void)
{
        struct kvd_scales s;

        memset(&s, 0x5c, sizeof s);
        return s;
}

/* Loads with cfg given as JSON text ("null" = NULL); returns the code. */
static int load(const char *cfg_text, uint32_t layers, const char *dtype, struct kvd_scales *s, char *err,
                size_t errlen)
{
        cJSON *cfg = strcmp(cfg_text, "null") ? cJSON_Parse(cfg_text) : NULL;
        int r;

        cr_assert(cfg || !strcmp(cfg_text, "null"), "bad test JSON %s", cfg_text);
        r = kvd_scales_load(cfg, layers, dtype, s, err, errlen);
        cJSON_Delete(cfg);
        return r;
}

/* Expects a failure with -EINVAL (or code), a message containing needle,
 * and *s untouched. */
static void expect_fail(const char *cfg_text, uint32_t layers, const char *dtype, int code, const char *needle)
{
        struct kvd_scales s = sentinel(), ref = sentinel();
        char err[1024] = "";
        int r = load(cfg_text, layers, dtype, &s, err, sizeof err);

        cr_assert_eq(r, code, "%s on %s: rc %d (%s)", cfg_text, dtype, r, err);
        cr_assert(strstr(err, needle), "%s: message \"%s\" lacks \"%s\"", cfg_text, err, needle);
        cr_assert_eq(memcmp(&s, &ref, sizeof s), 0, "out-parameter touched on failure");
}

static char *write_tmp(char *path, size_t n, const char *text)
{
        static int counter;
        FILE *f;

        snprintf(path, n, "/tmp/kvtest-scales-%d-%d.json", getpid(), counter++);
        f = fopen(path, "w");
        cr_assert_not_null(f);
        fputs(text, f);
        fclose(f);
        return path;
}

Test(scales, default_is_constant_one_and_warns_on_fp8)
{
        struct kvd_scales s;
        char err[256];

        cr_assert_eq(load("null", 4, "fp8_e4m3", &s, err, sizeof err), 0);
        cr_assert_str_eq(s.source, "constant");
        cr_assert_str_eq(s.path, "");
        cr_assert_eq(s.num_layers, 4);
        for (int l = 0; l < 4; l++) {
                cr_assert_eq(s.k[l], 1.0f);
                cr_assert_eq(s.v[l], 1.0f);
        }
        cr_assert_eq(s.k_min, 1.0f);
        cr_assert_eq(s.v_max, 1.0f);
        cr_assert_eq(s.warn_unscaled, 1);
        kvd_scales_fini(&s);
        cr_assert_null(s.k);

        /* non-fp8 pools: 1.0, unused, nothing to warn about */
        cr_assert_eq(load("null", 2, "bf16", &s, err, sizeof err), 0);
        cr_assert_eq(s.warn_unscaled, 0);
        cr_assert_eq(s.k[1], 1.0f);
        kvd_scales_fini(&s);
        cr_assert_eq(load("{\"source\":\"constant\"}", 2, "fp4_e2m1", &s, err, sizeof err), 0);
        cr_assert_eq(s.warn_unscaled, 0);
        kvd_scales_fini(&s);
        kvd_scales_fini(NULL);
}

Test(scales, constant_values)
{
        struct kvd_scales s;
        char err[256];

        cr_assert_eq(load("{\"source\":\"constant\",\"k\":0.125,\"v\":3}", 3, "fp8_e5m2", &s, err, sizeof err), 0,
                     "%s", err);
        for (int l = 0; l < 3; l++) {
                cr_assert_eq(s.k[l], 0.125f);
                cr_assert_eq(s.v[l], 3.0f);
        }
        cr_assert_eq(s.k_min, 0.125f);
        cr_assert_eq(s.k_max, 0.125f);
        cr_assert_eq(s.v_min, 3.0f);
        cr_assert_eq(s.warn_unscaled, 1);
        kvd_scales_fini(&s);
        /* only one given: the other defaults to 1.0; dtype aliases work */
        cr_assert_eq(load("{\"source\":\"constant\",\"v\":0.5}", 1, "float8_e4m3fn", &s, err, sizeof err), 0);
        cr_assert_eq(s.k[0], 1.0f);
        cr_assert_eq(s.v[0], 0.5f);
        kvd_scales_fini(&s);
}

Test(scales, constant_bad_values)
{
        expect_fail("{\"source\":\"constant\",\"k\":-1}", 2, "fp8_e4m3", -EINVAL, "\"k\": expected a positive");
        expect_fail("{\"source\":\"constant\",\"v\":0}", 2, "fp8_e4m3", -EINVAL, "\"v\": expected a positive");
        expect_fail("{\"source\":\"constant\",\"k\":\"1.0\"}", 2, "fp8_e4m3", -EINVAL, "got a string");
        expect_fail("{\"source\":\"constant\",\"k\":1e300}", 2, "fp8_e4m3", -EINVAL, "\"k\"");
        expect_fail("{\"source\":\"constant\",\"path\":\"x\"}", 2, "fp8_e4m3", -EINVAL, "unknown key \"path\"");
        expect_fail("{\"source\":\"constant\",\"k\":0.5}", 2, "bf16", -EINVAL, "bf16 pool stores unscaled");
}

Test(scales, bad_config)
{
        expect_fail("{\"source\":\"file\"}", 2, "fp8_e4m3", -EINVAL, "\"source\": expected \"constant\"");
        expect_fail("{\"k\":1}", 2, "fp8_e4m3", -EINVAL, "\"source\"");
        expect_fail("[1]", 2, "fp8_e4m3", -EINVAL, "expected an object");
        expect_fail("{\"source\":\"json\"}", 2, "fp8_e4m3", -EINVAL, "\"path\"");
        expect_fail("{\"source\":\"json\",\"path\":\"a\",\"tp\":1}", 2, "fp8_e4m3", -EINVAL, "unknown key \"tp\"");
        expect_fail("{\"source\":\"json\",\"path\":\"/nonexistent/kv.json\"}", 2, "fp8_e4m3", -ENOENT,
                    "/nonexistent/kv.json");
        expect_fail("{\"source\":\"json\",\"path\":\"x.json\"}", 2, "bf16", -EINVAL, "only to fp8 pools");
        expect_fail("{\"source\":\"safetensors\",\"path\":\"x\"}", 2, "fp4_e2m1", -EINVAL, "only to fp8 pools");
        expect_fail("null", 2, "int8", -EINVAL, "unknown pool dtype \"int8\"");
        expect_fail("null", 0, "fp8_e4m3", -EINVAL, "at least one layer");
}

Test(scales, json_valid_and_tp_rank)
{
        char path[128], cfg[256], err[512];
        struct kvd_scales s;

        write_tmp(path, sizeof path,
                  "{\"model_type\":\"llama\",\"kv_cache\":{\"dtype\":\"float8_e4m3fn\",\"scaling_factor\":"
                  "{\"0\":{\"0\":0.0152,\"1\":0.0188,\"2\":0.5},\"1\":{\"2\":2,\"0\":0.25,\"1\":1}}}}");
        snprintf(cfg, sizeof cfg, "{\"source\":\"json\",\"path\":\"%s\"}", path);
        cr_assert_eq(load(cfg, 3, "fp8_e4m3", &s, err, sizeof err), 0, "%s", err);
        cr_assert_str_eq(s.source, "json");
        cr_assert_str_eq(s.path, path);
        cr_assert_eq(s.k[0], 0.0152f);
        cr_assert_eq(s.v[0], 0.0152f);
        cr_assert_eq(s.k[1], 0.0188f);
        cr_assert_eq(s.k[2], 0.5f);
        cr_assert_eq(s.k_min, 0.0152f);
        cr_assert_eq(s.k_max, 0.5f);
        cr_assert_eq(s.warn_unscaled, 0);
        kvd_scales_fini(&s);

        snprintf(cfg, sizeof cfg, "{\"source\":\"json\",\"path\":\"%s\",\"tp_rank\":1}", path);
        cr_assert_eq(load(cfg, 3, "fp8_e4m3", &s, err, sizeof err), 0, "%s", err);
        cr_assert_eq(s.k[0], 0.25f);
        cr_assert_eq(s.v[2], 2.0f);
        kvd_scales_fini(&s);

        snprintf(cfg, sizeof cfg, "{\"source\":\"json\",\"path\":\"%s\",\"tp_rank\":2}", path);
        expect_fail(cfg, 3, "fp8_e4m3", -EINVAL, "tp_rank 2 requested but the file has 2 ranks");
        /* the file is for e4m3: an e5m2 pool refuses it, naming the key */
        snprintf(cfg, sizeof cfg, "{\"source\":\"json\",\"path\":\"%s\"}", path);
        expect_fail(cfg, 3, "fp8_e5m2", -EINVAL, "kv_cache.dtype: expected \"float8_e5m2\"");
        /* the pool has 4 layers, the file 3 */
        expect_fail(cfg, 4, "fp8_e4m3", -EINVAL, "layer \"3\" is missing");
        expect_fail(cfg, 2, "fp8_e4m3", -EINVAL, "layer \"2\" is extra");
        unlink(path);
}

Test(scales, json_bad_values)
{
        char path[128], cfg[256];

        write_tmp(path, sizeof path,
                  "{\"kv_cache\":{\"dtype\":\"float8_e4m3fn\",\"scaling_factor\":{\"0\":{\"0\":0.5,\"1\":-0.5}}}}");
        snprintf(cfg, sizeof cfg, "{\"source\":\"json\",\"path\":\"%s\"}", path);
        expect_fail(cfg, 2, "fp8_e4m3", -EINVAL, "kv_cache.scaling_factor.\"0\".\"1\": expected a positive finite");
        unlink(path);
        write_tmp(path, sizeof path, "{\"kv_cache\":{\"dtype\":\"float8_e4m3fn\",\"scaling_factor\":{\"0\":{\"0\":0.5,");
        snprintf(cfg, sizeof cfg, "{\"source\":\"json\",\"path\":\"%s\"}", path);
        expect_fail(cfg, 2, "fp8_e4m3", -EINVAL, "not valid JSON");
        unlink(path);
}

/* The repeated-key check (json_strict.h, run on every scale file, index and
 * safetensors header) on an object of many members: a sharded checkpoint's
 * index has one weight_map entry per tensor, tens of thousands for a large
 * model.  Counted in key comparisons, not timed: pairwise, 20000 members
 * took 2e8 (and 36000 took 15 s at start); sorted, n log n. */
Test(scales, repeated_key_check_is_not_quadratic)
{
        const unsigned n = 20000;
        cJSON *root = cJSON_CreateObject(), *wm = cJSON_AddObjectToObject(root, "weight_map");
        char key[64], where[256] = "";
        const char *dkey = NULL;

        cr_assert_not_null(wm);
        for (unsigned i = 0; i < n; i++) {
                snprintf(key, sizeof key, "model.layers.%u.mlp.experts.%u.down_proj.weight", i / 128, i % 128);
                cr_assert_not_null(cJSON_AddStringToObject(wm, key, "model-00001-of-00002.safetensors"));
        }
        kvd_json_key_compares = 0;
        cr_assert_eq(kvd_json_dup_key(root, where, sizeof where, 0, &dkey), 0);
        cr_assert_leq(kvd_json_key_compares, 2ull * n * 15, "%llu key comparisons for %u keys",
                      kvd_json_key_compares, n);
        /* and a repeated key among them is still found, with its place */
        cr_assert_not_null(cJSON_AddStringToObject(wm, "model.layers.7.mlp.experts.3.down_proj.weight", "x"));
        cr_assert_eq(kvd_json_dup_key(root, where, sizeof where, 0, &dkey), 1);
        cr_assert_str_eq(dkey, "model.layers.7.mlp.experts.3.down_proj.weight");
        cr_assert_str_eq(where, "weight_map");
        cJSON_Delete(root);
}
