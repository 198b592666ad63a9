/* test_layout.c - kernels/kv_layout.c: offsets and sizes to the byte
 * (design §4), capacity ratios of bf16 / fp8 / fp4 pools in the same byte
 * budget (design §3: 2.00 and 3.56), kv_layout_fit optimality, geometry
 * errors, and the dtype names. */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <string.h>

#include "kv_layout.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

static struct kv_geom geom(enum kvc_dtype d, uint32_t L, uint32_t H, uint32_t D, uint32_t P)
{
        struct kv_geom g = { .dtype = d, .num_layers = L, .kv_heads = H, .head_dim = D, .page_size = P };
        return g;
}

/* Hand-computed layouts: the literal numbers come from design §4, not from
 * the code under test. */
Test(layout, llama8b_fp8_to_the_byte)
{
        struct kv_layout L;
        struct kv_geom g = geom(KVC_DTYPE_FP8_E4M3, 32, 8, 128, 16);
        cr_assert_eq(kv_layout_init(&g, 1000, &L), 0);
        cr_expect_eq(L.head_bytes, 128);
        cr_expect_eq(L.token_bytes, 1024);
        cr_expect_eq(L.page_bytes, 16384);
        cr_expect_eq(L.scale_page_bytes, 0);
        cr_expect_eq(L.k_offset, 0);
        cr_expect_eq(L.v_offset, 16384000);
        cr_expect_eq(L.layer_stride, 32768000);
        cr_expect_eq(L.used_bytes, 1048576000);
        cr_expect_eq(L.alloc_bytes, 1048576000, "exactly 500 x 2 MiB");
        cr_expect_eq(kv_layout_tokens(&L), 16000);
        cr_expect_eq(kv_layout_v(&L, 31), 31ull * 32768000 + 16384000);
}

Test(layout, small_fp4_with_padding_to_the_byte)
{
        struct kv_layout L;
        /* head_dim 16, one head, page_size 1: 8 data bytes and 1 scale byte a page */
        struct kv_geom g = geom(KVC_DTYPE_FP4_E2M1, 3, 1, 16, 1);
        cr_assert_eq(kv_layout_init(&g, 3, &L), 0);
        cr_expect_eq(L.head_bytes, 8);
        cr_expect_eq(L.page_bytes, 8);
        cr_expect_eq(L.scale_head_bytes, 1);
        cr_expect_eq(L.scale_token_bytes, 1);
        cr_expect_eq(L.scale_page_bytes, 1);
        cr_expect_eq(L.k_offset, 0);
        cr_expect_eq(L.v_offset, 256, "24 bytes of K padded to 256");
        cr_expect_eq(L.ks_offset, 512);
        cr_expect_eq(L.vs_offset, 768, "3 scale bytes padded to 256");
        cr_expect_eq(L.layer_stride, 1024);
        cr_expect_eq(L.used_bytes, 3072);
        cr_expect_eq(L.alloc_bytes, 2 * MiB);
        cr_expect_eq(kv_layout_ks(&L, 2), 2048 + 512);
        cr_expect_eq(kv_layout_vs(&L, 1), 1024 + 768);
}

Test(layout, bf16_odd_sizes_to_the_byte)
{
        struct kv_layout L;
        /* 80 layers, 8 heads, 128 dims, page 1, 7 pages, bf16:
         * page = 2048 bytes, K = 14336 (56 x 256), stride 28672 */
        struct kv_geom g = geom(KVC_DTYPE_BF16, 80, 8, 128, 1);
        cr_assert_eq(kv_layout_init(&g, 7, &L), 0);
        cr_expect_eq(L.page_bytes, 2048);
        cr_expect_eq(L.v_offset, 14336);
        cr_expect_eq(L.layer_stride, 28672);
        cr_expect_eq(L.used_bytes, 2293760);
        cr_expect_eq(L.alloc_bytes, 4 * MiB);
        /* fp16 with head_dim 48 and 3 heads, page 5, 11 pages: page = 1440,
         * K = 15840 -> 15872 (62 x 256) */
        g = geom(KVC_DTYPE_FP16, 2, 3, 48, 5);
        cr_assert_eq(kv_layout_init(&g, 11, &L), 0);
        cr_expect_eq(L.page_bytes, 1440);
        cr_expect_eq(L.v_offset, 15872);
        cr_expect_eq(L.layer_stride, 31744);
        cr_expect_eq(L.ks_offset, 0);
        cr_expect_eq(L.vs_offset, 0);
}

static uint64_t up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* Design §4 arithmetic for many geometries and page counts. */
Test(layout, formula_for_many_geometries)
{
        static const uint32_t Ls[] = { 1, 3, 32, 61 }, Hs[] = { 1, 2, 8, 13 }, Ds[] = { 16, 64, 128, 256, 512 },
                              Ps[] = { 1, 7, 16, 64, 1024 }, Ns[] = { 1, 2, 3, 100, 4097 };
        for (int d = 0; d < KVC_DTYPE__COUNT; d++)
        for (int a = 0; a < 4; a++) for (int b = 0; b < 4; b++) for (int c = 0; c < 5; c++)
        for (int e = 0; e < 5; e++) for (int n = 0; n < 5; n++) {
                struct kv_geom g = geom((enum kvc_dtype)d, Ls[a], Hs[b], Ds[c], Ps[e]);
                struct kv_layout L;
                cr_assert_eq(kv_layout_init(&g, Ns[n], &L), 0);
                double bpe = d <= KVC_DTYPE_FP16 ? 2 : d <= KVC_DTYPE_FP8_E5M2 ? 1 : 0.5;
                uint64_t page = (uint64_t)(Ps[e] * Hs[b] * Ds[c] * bpe);
                uint64_t spage = d == KVC_DTYPE_FP4_E2M1 ? (uint64_t)Ps[e] * Hs[b] * Ds[c] / 16 : 0;
                uint64_t arr = up(page * Ns[n], 256), sarr = up(spage * Ns[n], 256);
                cr_assert_eq(L.page_bytes, page);
                cr_assert_eq(L.scale_page_bytes, spage);
                cr_assert_eq(L.v_offset, arr);
                if (spage) {
                        cr_assert_eq(L.ks_offset, 2 * arr);
                        cr_assert_eq(L.vs_offset, 2 * arr + sarr);
                }
                cr_assert_eq(L.layer_stride, 2 * arr + 2 * sarr);
                cr_assert_eq(L.used_bytes, Ls[a] * L.layer_stride);
                cr_assert_eq(L.alloc_bytes, up(L.used_bytes, 2 * MiB));
                for (uint32_t l = 0; l < Ls[a]; l++) {
                        cr_assert_eq(kv_layout_k(&L, l) % 256, 0);
                        cr_assert_eq(kv_layout_v(&L, l) % 256, 0);
                        cr_assert_eq(kv_layout_ks(&L, l) % 256, 0);
                        cr_assert_eq(kv_layout_vs(&L, l) % 256, 0);
                }
        }
}

/* kv_layout_fit gives the largest page count whose alloc_bytes fits. */
Test(layout, fit_is_the_largest_that_fits)
{
        static const uint64_t budgets[] = { 2 * MiB, 2 * MiB + 1, 3 * MiB, 100 * MiB + 12345, GiB,
                                            7 * GiB + 3 * MiB, 40 * GiB, 137 * GiB };
        static const struct { uint32_t L, H, D, P; } G[] = {
                { 32, 8, 128, 16 }, { 80, 8, 128, 32 }, { 28, 4, 64, 1 }, { 61, 1, 256, 64 },
                { 1, 1, 16, 1 }, { 126, 16, 128, 16 }, { 3, 13, 48, 7 },
        };
        int capped = 0;
        for (int d = 0; d < KVC_DTYPE__COUNT; d++)
        for (size_t gi = 0; gi < sizeof(G) / sizeof(G[0]); gi++)
        for (size_t bi = 0; bi < sizeof(budgets) / sizeof(budgets[0]); bi++) {
                struct kv_geom g = geom((enum kvc_dtype)d, G[gi].L, G[gi].H, G[gi].D, G[gi].P);
                struct kv_layout L, M;
                int r = kv_layout_fit(&g, budgets[bi], &L);
                if (r == -ENOSPC) {
                        cr_assert(kv_layout_init(&g, 1, &M) == 0 && M.alloc_bytes > budgets[bi],
                                  "ENOSPC but one page fits");
                        continue;
                }
                cr_assert_eq(r, 0);
                cr_assert_leq(L.alloc_bytes, budgets[bi]);
                if (L.num_pages == INT32_MAX) {         /* capped: page ids are int32 */
                        cr_assert_eq(kv_layout_init(&g, L.num_pages + 1u, &M), -EOVERFLOW);
                        capped++;
                        continue;
                }
                cr_assert_eq(kv_layout_init(&g, L.num_pages + 1, &M), 0);
                cr_assert_gt(M.alloc_bytes, budgets[bi], "d=%d g=%zu budget=%llu: %u+1 pages fit too",
                             d, gi, (unsigned long long)budgets[bi], L.num_pages);
        }
        /* 137 GiB of 8-byte fp4 pages (one layer) is 2^34 pages: capped */
        cr_expect_gt(capped, 0);
}

/* Design §3: in one byte budget fp8 holds 2x and fp4 3.56x the tokens of
 * bf16 (fp4 = 1.78 x fp8), within one page of rounding. */
Test(layout, capacity_ratios)
{
        static const uint64_t budgets[] = { GiB, 7 * GiB + 5 * MiB, 40 * GiB, 120 * GiB };
        static const struct { uint32_t L, H, D, P; } G[] = {
                { 32, 8, 128, 16 }, { 80, 8, 128, 16 }, { 28, 4, 128, 1 }, { 61, 1, 256, 64 },
                { 36, 8, 64, 32 }, { 24, 16, 256, 8 },
        };
        const double r_fp8 = 2.0, r_fp4 = 2.0 / (0.5 + 1.0 / 16);      /* 3.5556 */
        int big = 0;
        for (size_t gi = 0; gi < sizeof(G) / sizeof(G[0]); gi++)
        for (size_t bi = 0; bi < sizeof(budgets) / sizeof(budgets[0]); bi++) {
                struct kv_layout b16, f8, f4, e5;
                struct kv_geom g = geom(KVC_DTYPE_BF16, G[gi].L, G[gi].H, G[gi].D, G[gi].P);
                cr_assert_eq(kv_layout_fit(&g, budgets[bi], &b16), 0);
                g.dtype = KVC_DTYPE_FP8_E4M3;
                cr_assert_eq(kv_layout_fit(&g, budgets[bi], &f8), 0);
                g.dtype = KVC_DTYPE_FP8_E5M2;
                cr_assert_eq(kv_layout_fit(&g, budgets[bi], &e5), 0);
                g.dtype = KVC_DTYPE_FP4_E2M1;
                cr_assert_eq(kv_layout_fit(&g, budgets[bi], &f4), 0);
                double n16 = b16.num_pages, n8 = f8.num_pages, n4 = f4.num_pages;
                cr_expect_eq(e5.num_pages, f8.num_pages);
                /* within one page of the larger dtype's page, i.e. the ratio
                 * of pages is off by at most r+1 pages of the smaller dtype */
                cr_expect(fabs(n8 - r_fp8 * n16) <= r_fp8 + 1, "g=%zu b=%zu fp8 %g vs bf16 %g", gi, bi, n8, n16);
                cr_expect(fabs(n4 - r_fp4 * n16) <= r_fp4 + 1, "g=%zu b=%zu fp4 %g vs bf16 %g", gi, bi, n4, n16);
                cr_expect(fabs(n4 - n8 / 0.5625) <= 1 / 0.5625 + 1, "g=%zu b=%zu fp4 %g vs fp8 %g", gi, bi, n4, n8);
                /* and printed to two decimals, the ratios are the design's */
                if (n16 >= 5000) {      /* page rounding below 0.001 of the ratio */
                        big++;
                        double t16 = (double)kv_layout_tokens(&b16);
                        cr_expect_eq(lround(100.0 * kv_layout_tokens(&f8) / t16), 200);
                        cr_expect_eq(lround(100.0 * kv_layout_tokens(&f4) / t16), 356);
                        cr_expect_eq(lround(100.0 * kv_layout_tokens(&f4) / kv_layout_tokens(&f8)), 178);
                }
        }
        cr_expect_geq(big, 8, "enough large pools to check the printed ratios");
}

Test(layout, geometry_errors)
{
        char err[160];
        struct kv_layout L;
        memset(&L, 0x5A, sizeof(L));
        struct kv_layout before = L;
        static const struct { struct kv_geom g; const char *needle; } bad[] = {
                { { (enum kvc_dtype)9, 32, 8, 128, 16 }, "dtype 9" },
                { { KVC_DTYPE_BF16, 0, 8, 128, 16 }, "num_layers 0" },
                { { KVC_DTYPE_BF16, 1025, 8, 128, 16 }, "num_layers 1025" },
                { { KVC_DTYPE_BF16, 32, 0, 128, 16 }, "kv_heads 0" },
                { { KVC_DTYPE_BF16, 32, 257, 128, 16 }, "kv_heads 257" },
                { { KVC_DTYPE_BF16, 32, 8, 0, 16 }, "head_dim 0" },
                { { KVC_DTYPE_BF16, 32, 8, 100, 16 }, "head_dim 100" },
                { { KVC_DTYPE_BF16, 32, 8, 528, 16 }, "head_dim 528" },
                { { KVC_DTYPE_BF16, 32, 8, 128, 0 }, "page_size 0" },
                { { KVC_DTYPE_BF16, 32, 8, 128, 1025 }, "page_size 1025" },
        };
        for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
                err[0] = 0;
                cr_expect_eq(kv_geom_check(&bad[i].g, err, sizeof(err)), -EINVAL);
                cr_expect(strstr(err, bad[i].needle), "'%s' should name '%s'", err, bad[i].needle);
                cr_expect_eq(kv_layout_init(&bad[i].g, 10, &L), -EINVAL);
                cr_expect_eq(kv_layout_fit(&bad[i].g, GiB, &L), -EINVAL);
        }
        cr_expect_eq(kv_geom_check(NULL, err, sizeof(err)), -EINVAL);
        cr_expect_eq(kv_geom_check(&bad[0].g, NULL, 0), -EINVAL, "err may be NULL");

        struct kv_geom g = geom(KVC_DTYPE_FP4_E2M1, 32, 8, 128, 16);
        cr_expect_eq(kv_geom_check(&g, err, sizeof(err)), 0);
        cr_expect_eq(kv_layout_init(&g, 0, &L), -EINVAL, "zero pages");
        cr_expect_eq(kv_layout_init(&g, (uint32_t)INT32_MAX + 1, &L), -EOVERFLOW, "page ids are int32");
        cr_expect_eq(kv_layout_fit(&g, 2 * MiB - 1, &L), -ENOSPC);
        g = geom(KVC_DTYPE_BF16, 1024, 256, 512, 1024);        /* 2^28-byte pages */
        cr_expect_eq(kv_layout_fit(&g, 256 * MiB, &L), -ENOSPC, "one page needs 512 GiB");
        cr_expect_eq(kv_layout_init(&g, INT32_MAX, &L), -EOVERFLOW, "2^70 bytes");
        cr_expect_eq(memcmp(&L, &before, sizeof(L)), 0, "ret untouched on failure");
        /* the largest geometry still fits a huge budget without overflow */
        cr_expect_eq(kv_layout_fit(&g, UINT64_MAX, &L), 0);
        /* (2^64 - 2^21) / 1024 layers / 2^29 bytes a page = 2^25 - 1 pages */
        cr_expect_eq(L.num_pages, (1u << 25) - 1);
        cr_expect_eq(L.alloc_bytes, UINT64_MAX - (1ull << 39) + 1, "2^64 - 2^39");
}

Test(layout, dtype_bits_and_names)
{
        static const char *names[] = { "bf16", "fp16", "fp8_e4m3", "fp8_e5m2", "fp4_e2m1" };
        static const uint32_t bits[] = { 16, 16, 8, 8, 4 };
        for (int d = 0; d < KVC_DTYPE__COUNT; d++) {
                enum kvc_dtype p = KVC_DTYPE__COUNT;
                cr_expect_str_eq(kvc_dtype_name((enum kvc_dtype)d), names[d]);
                cr_expect_eq(kvc_dtype_parse(names[d], &p), 0);
                cr_expect_eq(p, d);
                cr_expect_eq(kv_dtype_bits((enum kvc_dtype)d), bits[d]);
        }
        enum kvc_dtype p = KVC_DTYPE__COUNT;
        cr_expect_eq(kvc_dtype_parse("float8_e4m3fn", &p), 0, "vLLM/ml_dtypes spelling");
        cr_expect_eq(p, KVC_DTYPE_FP8_E4M3);
        cr_expect_eq(kvc_dtype_parse("BF16", &p), 0);
        cr_expect_eq(p, KVC_DTYPE_BF16);
        p = KVC_DTYPE__COUNT;
        cr_expect_eq(kvc_dtype_parse("fp8_e4m3fnuz", &p), -EINVAL, "the AMD FNUZ variant is not ours");
        cr_expect_eq(kvc_dtype_parse("", &p), -EINVAL);
        cr_expect_eq(kvc_dtype_parse(NULL, &p), -EINVAL);
        cr_expect_eq(p, KVC_DTYPE__COUNT, "untouched on failure");
        cr_expect_null(kvc_dtype_name(KVC_DTYPE__COUNT));
        cr_expect_null(kvc_dtype_name((enum kvc_dtype)-1));
        cr_expect_eq(kv_dtype_bits((enum kvc_dtype)42), 0);
}
