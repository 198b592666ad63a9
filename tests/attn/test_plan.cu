/* test_plan.cu - the attention launcher's plan (kv_attn_plan.cuh:
 * take_tiled, decode_is_short, fills_wave, take_8warps, pick_mt,
 * plan_splits, plan_keys, take_heads) and a captured launch's row chunks
 * (kv_attn_ring.cuh: row_chunk_of) on the CPU.
 *
 * Which extend kernel (take_tiled), and the plans the H200 measured best (docs/benchmarks.md "Which kernel, and
 * how the tiled kernel is planned" and "Decode attention"), worked out here
 * the way kv_attn_decode.cu does it: the tiled kernel's CTAs counted from
 * the tiles that hold query vectors (ptile_busy), 8 warps tried first
 * (one CTA an SM), then 4 (two an SM), 132 SMs.  Each workload names the
 * warps, m-tiles, CTAs and splits it must get; a change of these
 * functions that moves one of them fails here, in every CI run, before any
 * GPU sees it.  How kv_attn_decode.cu wires them (busy counts, occupancy
 * queries) is the GPU suite's to check.
 *
 * Runs without a GPU (suite unit); exit status 0 when every plan holds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "kv_attn_extend.cuh"
#include "kv_attn_plan.cuh"

static int failures, cases;

#define CHECK(cond, ...)                             \
        do {                                         \
                cases++;                             \
                if (!(cond)) {                       \
                        failures++;                  \
                        printf("FAIL: ");            \
                        printf(__VA_ARGS__);         \
                        printf("\n");                \
                }                                    \
        } while (0)

enum { SMS = 132, MAX_SPLITS = 1024 /* kva::MAX_SPLITS, kv_attn_decode.cuh */ };

struct plan {
        int pw, mt;
        uint64_t ctas, splits;
        uint32_t chunk;
};

/* The tiled kernel's plan for batch sequences of n new rows each (G q
 * heads a kv head, H kv heads, max_len keys), with 8-warp CTAs available
 * (a 16-bit or fp8 pool at head_dim 128) or not, on an H200: CTAs per SM
 * 1 at 8 warps, 2 at 4 (what the occupancy queries return there). */
static struct plan tiled(uint32_t batch, int32_t n, uint32_t G, uint32_t H, uint64_t max_len, bool wide)
{
        int32_t *qo = (int32_t *)malloc((batch + 1) * sizeof *qo);
        if (!qo) {
                printf("test_plan: out of memory\n");
                exit(1);
        }
        qo[0] = 0;
        for (uint32_t b = 0; b < batch; b++)
                qo[b + 1] = qo[b] + n;
        struct plan r = {};
        for (int pw = wide ? 8 : 4; pw >= 4; pw -= 4) {
                const int occ = pw == 8 ? 1 : 2;
                const uint64_t slots = (uint64_t)occ * SMS;
                const uint64_t b1 = kva::ptile_busy(qo, batch, G, pw * 16), b2 = kva::ptile_busy(qo, batch, G, pw * 32);
                const uint64_t qv2 = (uint64_t)pw * 32, e2 = ((uint64_t)batch * n * G + qv2 - 1) / qv2 * H;
                const bool split1 = kva::plan_keys(true, b1 * H, slots, max_len, MAX_SPLITS).splits > 1;
                const int mt = kva::pick_mt(b1 * H, b2 * H, e2, slots, slots, occ, split1);
                const uint64_t ctas = (mt == 2 ? b2 : b1) * H;
                if (pw == 4 || kva::take_8warps(ctas, slots, (uint64_t)batch * n * G, batch, (uint64_t)pw * 16 * mt)) {
                        const kva::split_plan sp = kva::plan_keys(true, ctas, slots, max_len, MAX_SPLITS);
                        r.pw = pw, r.mt = mt, r.ctas = ctas, r.splits = sp.splits, r.chunk = sp.chunk;
                        break;
                }
        }
        free(qo);
        return r;
}

/* Whether the launcher's work rule (kva::decode_is_short) hands batch
 * sequences of n rows over max_len keys (G q heads a kv head, H kv heads,
 * head_dim D) back to the decode kernel, as kv_attn_decode.cu works it out:
 * packs of 8 / G rows where G <= 4 (every sequence here has more rows than
 * one), else a row a CTA (G <= 8 here: one head group); occ decode CTAs an SM
 * (2 for 16-bit and fp8 pools at head_dim 128 on the H200, 4 for fp4). */
static bool decode_short(uint32_t batch, int32_t n, uint32_t G, uint32_t H, uint64_t max_len, uint64_t D, int occ)
{
        uint64_t ctas = (uint64_t)batch * (uint64_t)n * H;
        if (G <= 4) {
                const int pack = 8 / (int)G * (int)G;
                ctas = 0;
                for (uint32_t b = 0; b < batch; b++)
                        ctas += ((uint64_t)n * G + pack - 1) / pack;
                ctas *= H;
        }
        const kva::split_plan d = kva::plan_keys(false, ctas, (uint64_t)occ * SMS, max_len, MAX_SPLITS);
        return kva::decode_is_short(ctas * d.splits, SMS, d.chunk, D, KVA_PWORK);
}

static void want(const char *what, struct plan got, int pw, int mt, uint64_t ctas, uint64_t splits)
{
        CHECK(got.pw == pw && got.mt == mt && got.ctas == ctas && got.splits == splits,
              "%s: %d warps, %d m-tiles, %llu CTAs, %llu splits; want %d, %d, %llu, %llu", what, got.pw, got.mt,
              (unsigned long long)got.ctas, (unsigned long long)got.splits, pw, mt, (unsigned long long)ctas,
              (unsigned long long)splits);
}

/* B rows of L keys on slots, and whether heads is the way wanted there */
struct shape_case {
        uint32_t B, L;
        uint64_t slots;
        bool     heads;
};

/* The launcher's choice (kva::pick_heads) for B decode rows of L keys, 8
 * or hgt head slots a row, on slots, rows of rb bytes; the tiles plan in
 * *ret_sp.  weigh false: as under capture (no lengths). */
static kva::heads_choice choose(uint32_t B, uint32_t L, uint64_t hgt, uint64_t slots, uint64_t rb, bool fp4,
                                kva::split_plan *ret_sp, bool weigh = true)
{
        static int32_t lens[512];
        for (uint32_t b = 0; b < B && b < 512; b++)
                lens[b] = (int32_t)L;
        const uint64_t ctas = (uint64_t)B * hgt;
        const kva::split_plan sp = kva::plan_keys(false, ctas, slots, L, MAX_SPLITS);
        if (ret_sp)
                *ret_sp = sp;
        return kva::pick_heads(weigh ? lens : NULL, B, 32768, hgt, ctas, sp, slots, L, MAX_SPLITS, 4, rb, fp4);
}

int main(void)
{
        /* the tiled kernel from 128 query vectors a sequence on average
         * with one sequence, 96 with 3, 80 with 2 or 4 and more */
        CHECK(kva::take_tiled(128, 1, 128, 80, 96) && !kva::take_tiled(127, 1, 128, 80, 96),
              "take_tiled at 128 vectors, one sequence");
        CHECK(kva::take_tiled(80 * 2, 2, 128, 80, 96) && !kva::take_tiled(80 * 2 - 1, 2, 128, 80, 96),
              "take_tiled at 80 vectors, 2 sequences");
        CHECK(kva::take_tiled(96 * 3, 3, 128, 80, 96) && !kva::take_tiled(96 * 3 - 1, 3, 128, 80, 96),
              "take_tiled at 96 vectors, 3 sequences");
        CHECK(kva::take_tiled(80 * 4, 4, 128, 80, 96) && !kva::take_tiled(79 * 4, 4, 128, 80, 96) &&
                      kva::take_tiled(80 * 16, 16, 128, 80, 96),
              "take_tiled at 80 vectors, 4 and 16 sequences");
        /* the launcher's defaults are those (kv_attn_plan.cuh) */
        CHECK(KVA_PMIN == 128 && KVA_PMIN4 == 80 && KVA_PMIN3 == 96,
              "KVA_PMIN %d, KVA_PMIN4 %d, KVA_PMIN3 %d: expected 128, 80 and 96", (int)KVA_PMIN, (int)KVA_PMIN4,
              (int)KVA_PMIN3);

        /* The work rule on the shapes it was measured on (docs/benchmarks.md
         * "Which kernel"; B x P x N: B sequences of P cached keys and N new
         * rows, 8 kv heads, head_dim 128): the decode kernel where it was
         * the faster one, the tiled kernel where that was */
        static const struct short_case {
                const char *what;
                uint32_t batch;
                int32_t rows;
                uint32_t G;
                uint64_t keys;
                int occ;
                bool decode;
        } wc[] = {
                { "1 x 1008 x 32", 1, 32, 4, 1040, 2, true },       { "1 x 1024 x 64", 1, 64, 4, 1088, 2, true },
                { "1 x 1024 x 128", 1, 128, 4, 1152, 2, true },     { "1 x 1024 x 128, fp4", 1, 128, 4, 1152, 4, true },
                { "2 x 1008 x 48", 2, 48, 4, 1056, 2, true },       { "4 x 1008 x 32", 4, 32, 4, 1040, 2, true },
                { "1 x 4064 x 32", 1, 32, 4, 4096, 2, true },       { "1 x 4080 x 16, G = 8", 1, 16, 8, 4096, 2, true },
                { "1 x 4048 x 48", 1, 48, 4, 4096, 2, false },      { "1 x 4048 x 48, fp4", 1, 48, 4, 4096, 4, false },
                { "1 x 4072 x 24, G = 8", 1, 24, 8, 4096, 2, false }, { "2 x 4064 x 32", 2, 32, 4, 4096, 2, false },
                { "3 x 4064 x 32", 3, 32, 4, 4096, 2, false },      { "4 x 4076 x 20", 4, 20, 4, 4096, 2, false },
                { "32 x 1000 x 24", 32, 24, 4, 1024, 2, false },    { "1 x 16352 x 32", 1, 32, 4, 16384, 2, false },
                { "1 x 3968 x 128", 1, 128, 4, 4096, 2, false },    { "8 x 4064 x 32", 8, 32, 4, 4096, 2, false },
        };
        for (const short_case &c : wc)
                CHECK(decode_short(c.batch, c.rows, c.G, 8, c.keys, 128, c.occ) == c.decode,
                      "%s: the work rule takes the %s kernel, want the %s one", c.what, c.decode ? "tiled" : "decode",
                      c.decode ? "decode" : "tiled");
        CHECK(KVA_PWORK == 5120, "KVA_PWORK %d, expected 5120", (int)KVA_PWORK);

        /* a wave to within an eighth: 116 of 132 slots */
        CHECK(kva::fills_wave(116, 132) && !kva::fills_wave(115, 132) && kva::fills_wave(128, 132),
              "fills_wave at 115, 116, 128 of 132");

        /* The tiled kernel's workloads, each with the plan it must get
         * (32/8 heads unless G and H say otherwise): */
        static const struct workload {
                const char *what;
                uint32_t batch;
                int32_t rows;
                uint32_t G, H;
                uint64_t max_len;
                bool wide; /* an 8-warp kernel exists (16-bit and fp8 pools at head_dim 128) */
                int pw, mt;
                uint64_t ctas, splits;
        } tw[] = {
                /* 128 vectors a sequence; 8 tiles of 128 a kv head (the grid
                 * has 16), under half the slots: two m-tiles, split in 4
                 * (880fb83 counted the grid's tiles and left 128 lone CTAs
                 * of one m-tile unsplit: 295 us against 134) */
                { "8 x 32 rows", 8, 32, 4, 8, 4096, true, 4, 2, 64, 4 },
                /* 256 CTAs of 64 vectors make one wave of the 264 slots (128
                 * of 128 would fill less than half): one m-tile, no split */
                { "16 x 32 rows", 16, 32, 4, 8, 4096, true, 4, 1, 256, 1 },
                /* 192 CTAs of 128 vectors (422 us) rather than 384 of 64 over
                 * two waves; in 4 splits, two CTAs an SM to the end (381 us;
                 * mid, KVA_PSMID) */
                { "24 x 32 rows", 24, 32, 4, 8, 4096, true, 4, 2, 192, 4 },
                /* 32/32 heads, 3 x 80 rows: 192 CTAs of 64 vectors, 96 of
                 * them a fifth full, split in 4 (16k keys: 1070 -> 831 us) */
                { "G = 1, 3 x 80 rows", 3, 80, 1, 32, 16384, true, 4, 1, 192, 4 },
                /* 288 CTAs on 264 slots, split in 4 (chunks of 1024) */
                { "36 x 32 rows", 36, 32, 4, 8, 4096, true, 4, 2, 288, 4 },
                /* 128 8-warp CTAs fill a wave (270 us; as 136 CTAs of 128
                 * vectors on 4 warps, 390-400) */
                { "1 x 512 rows", 1, 512, 4, 8, 4608, true, 8, 1, 128, 1 },
                /* 144 8-warp CTAs of one m-tile (two would leave SMs idle),
                 * more than the slots: split in 4 over 4656 keys (368 us
                 * against 519 on 4 warps and two m-tiles), not over 660 */
                { "1 x 560 rows, 4656 keys", 1, 560, 4, 8, 4656, true, 8, 1, 144, 4 },
                { "1 x 560 rows, 660 keys", 1, 560, 4, 8, 660, true, 8, 1, 144, 1 },
                /* fp4 has no 8-warp kernel: 4 warps.  144 CTAs of two
                 * m-tiles fill 55% of the slots: one m-tile, split in 4
                 * (337 us against 452); 12 x 48 rows, half of whose 192
                 * two-m-tile CTAs are half full, the same (334 against
                 * 399); 1 x 800 rows, 200 full ones, two m-tiles (399
                 * against 469) */
                { "1 x 560 rows, fp4", 1, 560, 4, 8, 4656, false, 4, 1, 280, 4 },
                { "12 x 48 rows, fp4", 12, 48, 4, 8, 4096, false, 4, 1, 288, 4 },
                { "1 x 800 rows, fp4", 1, 800, 4, 8, 4896, false, 4, 2, 200, 1 },
                /* under 2048 keys one m-tile cannot split: two where they
                 * fill half the slots (12 x 48 rows: 150 us against 178 on
                 * f16 q; 1 x 560 rows was faster with one, 147 against 165) */
                { "12 x 48 rows, 1040 keys, fp4", 12, 48, 4, 8, 1040, false, 4, 2, 192, 1 },
                { "1 x 560 rows, 1584 keys, fp4", 1, 560, 4, 8, 1584, false, 4, 2, 144, 1 },
                /* 448 CTAs of one m-tile that no split helps (85% of two
                 * waves either way): two m-tiles, one wave */
                { "28 x 20 rows, 2500 keys", 28, 20, 4, 8, 2500, true, 4, 2, 224, 1 },
                /* 8 warps, two m-tiles, a wave and more */
                { "8 x 512 rows", 8, 512, 4, 8, 4608, true, 8, 2, 512, 1 },
                /* 256 busy CTAs fill two waves of 132 (the grid's 288 made
                 * 880fb83 split in 3: 5% slower) */
                { "4 x 512 rows, 16896 keys", 4, 512, 4, 8, 16896, true, 8, 2, 256, 1 },
                /* enough vectors for 8-warp CTAs (512, two m-tiles) but 16 of
                 * them, far from a wave: 4 warps, split in 8 (8 warps lost
                 * 14-15% where the keys had to be split) */
                { "1 x 128 rows", 1, 128, 4, 8, 4096, true, 4, 2, 32, 8 },
                /* 32/32 heads: 64 CTAs of 128 vectors, split */
                { "G = 1, 2 x 128 rows", 2, 128, 1, 32, 4096, true, 4, 2, 64, 4 },
        };
        for (const workload &w : tw)
                want(w.what, tiled(w.batch, w.rows, w.G, w.H, w.max_len, w.wide), w.pw, w.mt, w.ctas, w.splits);

        /* Splits alone: decode (fp8 at 2 CTAs an SM: 264 slots; CTAs = rows
         * x kv heads), the max_splits clamp, short sequences (at least 128
         * keys a split, a multiple of 64) */
        static const struct splits_case {
                const char *what;
                uint64_t ctas, slots, max_len;
                uint64_t splits;
                uint32_t chunk;
        } sc[] = {
                { "decode B = 1 L = 32k", 8, 264, 32768, 32, 1024 },
                { "decode B = 8 L = 16k", 64, 264, 16384, 4, 4096 },
                { "decode B = 128 L = 1k", 1024, 264, 1024, 1, 1024 },
                { "160 CTAs on 264 slots", 160, 264, 4096, 1, 4096 },
                { "1 CTA, 2000 slots, 1M keys", 1, 2000, 1u << 20, 1024, 1024 },
                { "1 CTA, 300 keys", 1, 264, 300, 3, 128 },
                { "no keys", 1, 264, 0, 1, 64 },
                /* 1 to 1.5 waves take chunks of 1024 keys (decode_floor),
                 * from 1.5 waves on 4096 */
                { "decode B = 34 L = 4k (272 CTAs)", 272, 264, 4096, 4, 1024 },
                { "decode B = 44 L = 4k (352 CTAs)", 352, 264, 4096, 3, 1408 },
                { "decode B = 48 L = 4k (384 CTAs, 1.45 waves)", 384, 264, 4096, 2, 2048 },
                { "decode B = 52 L = 4k (416 CTAs, 1.58 waves)", 416, 264, 4096, 1, 4096 },
                { "decode B = 67 L = 4k (536 CTAs, 2.03 waves)", 536, 264, 4096, 1, 4096 },
                { "fp4 B = 67 L = 4k (536 CTAs on 528 slots)", 536, 528, 4096, 4, 1024 },
                { "decode B = 34 L = 8k (272 CTAs)", 272, 264, 8192, 4, 2048 },
                { "decode B = 34 L = 1k (272 CTAs)", 272, 264, 1024, 1, 1024 },
        };
        for (const splits_case &c : sc) {
                const kva::split_plan d = kva::plan_keys(false, c.ctas, c.slots, c.max_len, MAX_SPLITS);
                CHECK(d.splits == c.splits && d.chunk == c.chunk, "%s: %llu splits of %u keys, want %llu of %u",
                      c.what, (unsigned long long)d.splits, d.chunk, (unsigned long long)c.splits, c.chunk);
        }

        /* mid (the tiled kernel): between half the slots and the slots the
         * rule for more CTAs than slots, which there only splits where the
         * last wave fills clearly better (192 of 264 slots fill 73% of one
         * wave, 97% of 3 in 4 splits); without mid, no split */
        {
                const kva::split_plan m = kva::plan_splits(192, 264, 4096, 1024, MAX_SPLITS, 128, true);
                const kva::split_plan n = kva::plan_splits(192, 264, 4096, 1024, MAX_SPLITS, 128, false);
                const kva::split_plan f = kva::plan_splits(250, 264, 4096, 1024, MAX_SPLITS, 128, true);
                CHECK(m.splits == 4 && m.chunk == 1024 && n.splits == 1 && f.splits == 1,
                      "mid: 192 CTAs on 264 slots %llu splits (want 4), without mid %llu (want 1); 250 CTAs %llu "
                      "(want 1)",
                      (unsigned long long)m.splits, (unsigned long long)n.splits, (unsigned long long)f.splits);
        }

        /* A captured decode launch's rows spread their own lengths over the
         * splits planned for the table's capacity (row_chunk_of): every key
         * of the row is in some split, chunks are whole 64-key steps of at
         * least 128, and a row shorter than the capacity is not left to its
         * first split alone (B = 1, 1k keys of a 32k table: 8 splits busy) */
        {
                uint64_t bad = 0;
                for (uint64_t len = 0; len <= 70000; len += 1 + len / 64)
                        for (uint32_t sp = 1; sp <= MAX_SPLITS; sp += 1 + sp / 8) {
                                const uint32_t c = kva::row_chunk_of((uint32_t)len, sp);
                                if ((uint64_t)c * sp < len || c % 64 || c < 128)
                                        bad++;
                        }
                const uint32_t lens[] = { 0, 1, 127, 128, 129, 4096, 20001, 0x7FFFFFFF };
                for (uint32_t sp : { 1u, 2u, 33u, 1024u })
                        for (uint32_t len : lens) {
                                const uint32_t c = kva::row_chunk_of(len, sp);
                                if ((uint64_t)c * sp < len || c % 64 || c < 128)
                                        bad++;
                        }
                CHECK(bad == 0, "row_chunk_of: %llu (length, splits) pairs leave keys out or break the 64/128 rule",
                      (unsigned long long)bad);
                const kva::split_plan sp = kva::plan_keys(false, 8, 2 * SMS, 32768, MAX_SPLITS);
                CHECK(sp.splits == 32 && kva::row_chunk_of(1024, (uint32_t)sp.splits) == 128,
                      "a 32k table at B = 1: %llu splits, a 1k row's chunk %u; want 32 and 128 (8 busy splits)",
                      (unsigned long long)sp.splits, kva::row_chunk_of(1024, (uint32_t)sp.splits));
        }

        /* Warps a head or warps sharing a head's tiles (take_heads), 8 kv
         * heads of one group each: the way the H200 measured faster at each
         * of these shapes (docs/benchmarks.md "Warps a head"): fp8 and bf16
         * take 2 CTAs an SM (264 slots), fp4 4 (528) */
        {
                static const shape_case hc[] = {
                        { 128, 1024, 264, true },  { 256, 1024, 264, true },  { 128, 512, 264, true },
                        { 128, 2048, 264, true },  { 128, 4096, 264, true },  { 64, 1024, 264, false },
                        { 96, 1024, 264, false },  { 32, 4096, 264, false },  { 8, 16384, 264, false },
                        { 112, 1024, 264, true },  { 160, 1024, 264, false }, { 128, 8192, 264, true },
                        { 512, 512, 264, true },   { 128, 1024, 528, false }, { 256, 1024, 528, true },
                        { 128, 512, 528, false },  { 128, 2048, 528, false }, { 128, 4096, 528, false },
                        { 64, 1024, 528, false },  { 112, 1024, 528, false }, { 160, 1024, 528, false },
                        { 200, 1024, 528, false }, { 512, 512, 528, true },
                        /* long rows, heads in at most 2 waves (KVA_HWE) */
                        { 128, 16384, 264, true }, { 128, 32768, 264, true }, { 256, 16384, 264, true },
                        { 256, 16384, 528, true },
                        /* heads in 2 and 8 waves at 8k and 4k keys: fp4 faster
                         * with heads, bf16 1.5% slower (the estimate as before) */
                        { 512, 8192, 528, true }, { 1024, 4096, 264, false },
                        /* short rows (under KVA_HWEL), and long rows in more than 2
                         * waves of heads, keep the estimate as it was: with the
                         * factor these would take heads, unmeasured */
                        { 142, 1024, 264, false }, { 205, 1024, 528, false }, { 512, 16384, 264, false },
                };
                int32_t *lens = (int32_t *)malloc(1024 * sizeof *lens);
                if (!lens) {
                        printf("test_plan: out of memory\n");
                        return 1;
                }
                for (const shape_case &c : hc) {
                        for (uint32_t b = 0; b < c.B; b++)
                                lens[b] = (int32_t)c.L;
                        const bool got = kva::take_heads(lens, c.B, 32768, 8, c.slots, KVA_HWC0X2);
                        CHECK(got == c.heads, "take_heads B = %u L = %u on %llu slots: %s, want %s", c.B, c.L,
                              (unsigned long long)c.slots, got ? "heads" : "tiles", c.heads ? "heads" : "tiles");
                }
                /* one long row among short ones: its heads CTA would run alone */
                for (uint32_t b = 0; b < 128; b++)
                        lens[b] = b == 77 ? 4096 : 100;
                CHECK(!kva::take_heads(lens, 128, 4096, 8, 264, KVA_HWC0X2),
                      "take_heads: one row of 4096 keys among 127 of 100 took heads");
                /* a ragged batch of 128 rows of 1..2047 keys: the longest
                 * heads CTA is twice the mean one */
                for (uint32_t b = 0; b < 128; b++)
                        lens[b] = (int32_t)(1 + (b * 2654435761u) % 2047);
                CHECK(!kva::take_heads(lens, 128, 4096, 8, 264, KVA_HWC0X2),
                      "take_heads: 128 rows of 1..2047 keys took heads");
                /* more than one wave of heads CTAs: 256 rows of 128..1023
                 * keys measured 7% slower with heads, 512 rows of 64..511
                 * 20% faster (fp8; its tiles CTAs are mostly start) */
                for (uint32_t b = 0; b < 256; b++)
                        lens[b] = (int32_t)(128 + (b * 2654435761u) % 896);
                CHECK(!kva::take_heads(lens, 256, 4096, 8, 264, KVA_HWC0X2),
                      "take_heads: 256 rows of 128..1023 keys took heads");
                for (uint32_t b = 0; b < 512; b++)
                        lens[b] = (int32_t)(64 + (b * 2654435761u) % 448);
                CHECK(kva::take_heads(lens, 512, 4096, 8, 264, KVA_HWC0X2),
                      "take_heads: 512 rows of 64..511 keys took tiles");
                /* heads only where a row's slots fill whole CTAs; lengths
                 * past the table (cap) count as the cap, negative ones as 0 */
                for (uint32_t b = 0; b < 256; b++)
                        lens[b] = 1024;
                CHECK(!kva::take_heads(lens, 256, 32768, 6, 264, KVA_HWC0X2) &&
                              !kva::take_heads(lens, 256, 32768, 2, 264, KVA_HWC0X2) &&
                              kva::take_heads(lens, 256, 32768, 4, 264, KVA_HWC0X2),
                      "take_heads with 6 or 2 slots a row must take tiles, with 4 (B = 256, L = 1k) heads");
                lens[3] = 0x7FFFFFFF;
                lens[4] = -5;
                CHECK(kva::take_heads(lens, 128, 1024, 8, 264, KVA_HWC0X2),
                      "take_heads: a length past the cap (1024) or below 0 moved B = 128 L = 1k off heads");
                CHECK(!kva::take_heads(lens, 0, 1024, 8, 264, KVA_HWC0X2) &&
                              !kva::take_heads(lens, 128, 1024, 0, 264, KVA_HWC0X2),
                      "take_heads with no rows or no slots a row must take tiles");
                free(lens);
        }

        /* heads with 2 splits in one wave (KVA_HWSPLIT), as the launcher
         * decides (kva::pick_heads), at the shapes the H200 measured with
         * heads forced (docs/benchmarks.md "Long rows"): fp4 at B = 128
         * (heads 256 CTAs x 2 splits on 528 slots) 8-10% faster at 16k and
         * 32k keys, slower at 1k and 2k (at 4k even, at 8k 5% faster: the
         * estimate takes tiles there, rows under KVA_HWEL).  Rows of 128
         * bytes, so that the line rule below stays out of it. */
        {
                static const shape_case hs[] = {
                        { 128, 1024, 528, false },  { 128, 2048, 528, false }, { 128, 16384, 528, true },
                        { 128, 32768, 528, true },
                };
                for (const shape_case &c : hs) {
                        kva::split_plan sp;
                        const kva::heads_choice hc = choose(c.B, c.L, 8, c.slots, 128, true, &sp);
                        CHECK(sp.splits == 1 && hc.hsp.splits == 2,
                              "B = %u L = %u: plans of %llu and %llu splits, want 1 and 2", c.B, c.L,
                              (unsigned long long)sp.splits, (unsigned long long)hc.hsp.splits);
                        CHECK(hc.heads == c.heads, "heads with 2 splits B = %u L = %u: %s, want %s", c.B, c.L,
                              hc.heads ? "heads" : "tiles", c.heads ? "heads" : "tiles");
                }
        }

        /* rows under a cache line (take_heads_lines), as the launcher decides,
         * at shapes the H200 measured with both ways forced
         * (docs/benchmarks.md "Shared lines"): fp4 at head_dim 128 (64-byte
         * rows) on 528 slots took heads at 28-58 rows of 16k keys, 36 of 8k,
         * 88 of 32k and 128 of 8k-16k (several waves of tiles), tiles where
         * the tiles CTAs are short (B = 8 at 16k keys: 8 splits of 2k; 128
         * rows of 1k; 32 of 4k); not for rows of a whole line (bf16 at 64
         * dims, fp8 at 128), nor with idle warps (hgt 6) */
        {
                struct ln_case {
                        uint32_t B, L, rb, hgt;
                        uint64_t slots;
                        bool heads;
                        bool fp8; /* an 8-bit pool (else fp4) */
                } const ln[] = {
                        { 58, 16384, 64, 8, 528, true, false },   { 28, 16384, 64, 8, 528, true, false },
                        { 36, 8192, 64, 8, 528, true, false },    { 88, 32768, 64, 8, 528, true, false },
                        { 128, 8192, 64, 8, 528, true, false },   { 128, 16384, 64, 8, 528, true, false },
                        { 58, 16384, 32, 8, 528, true, false },   { 8, 16384, 64, 8, 528, false, false },
                        { 128, 1024, 64, 8, 528, false, false },  { 32, 4096, 64, 8, 528, false, false },
                        { 58, 16384, 128, 8, 528, false, false }, { 58, 16384, 64, 6, 528, false, false },
                        /* several waves of tiles: fp8 at head_dim 64 takes heads
                         * however full its one wave, fp4 only as above */
                        { 128, 16384, 64, 8, 396, true, true },    { 100, 32768, 64, 8, 528, true, true },
                        { 100, 32768, 64, 8, 528, false, false },  { 128, 1024, 64, 8, 396, false, true },
                        /* fp8 tiles at head_dim 64 (660 slots): in one wave, split
                         * chunks of 1k keys and more count as long (heads measured
                         * 0-17% faster at 1k to 6.6k), unsplit ones from 4k (48 x
                         * 2k 10% slower with heads, 64 x 1k and 82 x 1k 4-10%);
                         * over several waves, chunks from 2k (100 x 2k and 128 x
                         * 2k 14-16% faster, 160 x 1k level); shorter chunks are tiles
                         * (10 x 4k: 512 keys) */
                        { 24, 16384, 64, 8, 660, true, true },     { 8, 16384, 64, 8, 660, true, true },
                        { 8, 32768, 64, 8, 660, true, true },      { 12, 32768, 64, 8, 660, true, true },
                        { 5, 16384, 64, 8, 660, true, true },      { 28, 2048, 64, 8, 660, true, true },
                        { 80, 2048, 64, 8, 660, false, true },     { 100, 2048, 64, 8, 660, true, true },
                        { 48, 2048, 64, 8, 660, false, true },     { 128, 2048, 64, 8, 660, true, true },
                        { 64, 1024, 64, 8, 660, false, true },     { 82, 1024, 64, 8, 660, false, true },
                        { 160, 1024, 64, 8, 660, false, true },    { 10, 4096, 64, 8, 660, false, true },
                        { 8, 1024, 64, 8, 660, false, true },      { 1, 16384, 64, 8, 660, false, true },
                        { 8, 4096, 64, 8, 660, false, true },
                };
                for (const ln_case &c : ln) {
                        const bool heads = choose(c.B, c.L, c.hgt, c.slots, c.rb, !c.fp8, NULL).heads;
                        CHECK(heads == c.heads, "rows of %u bytes, B = %u L = %u, hgt %u, %s: %s, want %s", c.rb, c.B,
                              c.L, c.hgt, c.fp8 ? "fp8" : "fp4", heads ? "heads" : "tiles",
                              c.heads ? "heads" : "tiles");
                }
                /* a heads plan past one wave is never the line rule's */
                CHECK(!kva::take_heads_lines(64, 8, 8192, false, 4096, 1024, 528, true),
                      "take_heads_lines took heads whose plan has 1024 CTAs on 528 slots");
                /* extend rows and captured launches (no lengths): tiles */
                CHECK(!choose(58, 16384, 8, 528, 64, true, NULL, false).heads,
                      "pick_heads without lengths took heads");
        }

        printf("test_plan: %d checks, %d failures\n", cases, failures);
        return failures ? 1 : 0;
}
