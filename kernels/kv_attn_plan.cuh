/* kv_attn_plan.cuh - the attention launcher's plan as pure functions of
 * counts: how many m-tiles the tiled extend kernel's warps take, whether
 * its 8-warp CTAs fill the GPU, and how a sequence's keys are split.
 *
 * kv_attn_decode.cu queries the kernels' occupancies (CTAs per SM) and the
 * SM count and calls these with the CTAs a launch would make; the CTAs are
 * counted from the tiles that hold query vectors (ptile_busy,
 * kv_attn_extend.cuh), since the grid's empty tiles return at once.  The
 * "slots" of a kernel are its CTAs per SM times the SMs.  Host code only;
 * tests/attn/test_plan.cu checks the plans measured on the H200
 * (docs/benchmarks.md "Which kernel, and how the tiled kernel is planned").
 */
#ifndef KV_ATTN_PLAN_CUH
#define KV_ATTN_PLAN_CUH

#include <math.h>
#include <stdint.h>

namespace kva {

/* The defaults of take_tiled's thresholds, in query vectors a sequence on
 * average (-D to measure; KVA_PMIN4 and KVA_PMIN3 follow KVA_PMIN unless
 * given too; to force either kernel, kv_cuda_extend_kernel, kv_ops.h). */
#ifndef KVA_PMIN
#define KVA_PMIN 128
#endif
#ifndef KVA_PMIN4
#define KVA_PMIN4 (((uint64_t)(KVA_PMIN) * 5 + 7) / 8) /* 80 of 128 */
#endif
#ifndef KVA_PMIN3
#define KVA_PMIN3 (((uint64_t)(KVA_PMIN) * 3 + 3) / 4) /* 96 of 128 */
#endif
#ifndef KVA_PSFLOOR
#define KVA_PSFLOOR 1024 /* keys a split at least where the tiled kernel's launch has more CTAs than slots */
#endif
#ifndef KVA_PSMIN
#define KVA_PSMIN 128   /* keys a split at least where the tiled kernel's launch fills under half the slots (measuring) */
#endif
#ifndef KVA_PSMID
#define KVA_PSMID 1 /* plan_splits' mid for the tiled kernel (0: without, for measuring) */
#endif
#ifndef KVA_HWC0X2
#define KVA_HWC0X2 5 /* take_heads' cost of a CTA, in half warp tiles */
#endif
#ifndef KVA_HWE
#define KVA_HWE 0.97 /* take_heads: heads' estimate times this for long rows in at most 2 waves (1.0: without) */
#endif
#ifndef KVA_HWEL
#define KVA_HWEL 16384 /* take_heads: rows of at least this many keys on average are long for KVA_HWE */
#endif
#ifndef KVA_HW
#define KVA_HW 1 /* decode: take_heads weighs warps a head (0: never, for measuring) */
#endif
#ifndef KVA_HWSPLIT
#define KVA_HWSPLIT 1 /* decode: take_heads also weighs heads with 2 splits in one wave (0: not) */
#endif
#ifndef KVA_HWRED
#define KVA_HWRED 10 /* take_heads: a split launch's reduction, in half warp tiles */
#endif
#ifndef KVA_HWLINE
#define KVA_HWLINE 8192 /* decode: take_heads_lines' least tiles chunk in keys (0: never) */
#endif
#ifndef KVA_HWLINE8
#define KVA_HWLINE8 1024 /* take_heads_lines' least chunk for 8-bit rows, one wave of split tiles (0: any) */
#endif
#ifndef KVA_HWLINE8MW
#define KVA_HWLINE8MW 2048 /* the same where the tiles take several waves (0: any) */
#endif
#ifndef KVA_HWMW
#define KVA_HWMW 1 /* take_heads_lines: 8-bit rows also where the tiles take several waves (0: not) */
#endif
#ifndef KVA_DSFLOOR
#define KVA_DSFLOOR 4096 /* keys a split at least where the decode kernel's launch has more CTAs than slots */
#endif
#ifndef KVA_DSFLOOR2
#define KVA_DSFLOOR2 1024 /* the same where its last wave would be nearly empty (decode_floor) */
#endif
#ifndef KVA_DSMAX
#define KVA_DSMAX 150 /* decode_floor: KVA_DSFLOOR2 for launches of 1 to this % of a wave (100: never) */
#endif
#ifndef KVA_PWORK
#define KVA_PWORK 5120 /* decode_is_short's work (0: never, for measuring) */
#endif

/* Whether extend takes the tiled kernel (kv_attn_prefill.cuh) rather than
 * the decode kernel: its batch sequences average at least pmin query
 * vectors (rows x q heads of a kv head) where there is one, pmin3 where
 * there are 3, else pmin4.  The launcher passes KVA_PMIN, KVA_PMIN4 and
 * KVA_PMIN3: 128, 80 and 96.  On the H200 (docs/benchmarks.md "Which
 * kernel"), at 80-127 vectors:
 * - 4 to 128 sequences: the tiled kernel took 4-42% less time than the
 *   decode kernel, but for 16 at 80 vectors (5% more to 5% less);
 * - 2 sequences: up to 48% less at 4k and 16k keys (1k keys stay on the
 *   decode kernel: decode_is_short);
 * - 3 sequences: 8-47% less from 96 vectors (with plan_splits' mid), but
 *   at 80 from 23% less to 17% more (8 kv heads, 4k keys: the decode
 *   kernel's 240 CTAs fill one wave, its best case);
 * - one sequence: up to 35% slower at 64-80 and -7..+13% at 96-112. */
inline bool take_tiled(uint64_t vectors, uint64_t batch, uint64_t pmin, uint64_t pmin4, uint64_t pmin3)
{
        const uint64_t per = batch == 1 ? pmin : batch == 3 ? pmin3 : pmin4;
        return vectors >= per * batch;
}

/* Where the rule above takes the tiled kernel, whether the decode kernel
 * is taken after all because its launch would be short: ctas CTAs (splits
 * included) on sms SMs, chunk keys each, at head_dim D, make at most
 * work x 128 / D keys of CTA work per SM.  The tiled kernel pays about
 * 30 us on the H200 before its first key (q tiles, several barriers a key
 * tile, the partials of its splits and their reduction) where the decode
 * kernel pays about 11; both then scale with the keys (x D).  Measured
 * (docs/benchmarks.md "Which kernel", both kernels forced): the decode
 * kernel was faster up to 4608 (one sequence of 1k keys at 128-512 vectors,
 * 4 of 1k at 128, one of 4k at 128: 7-78%), the tiled kernel from 6144
 * (one of 4k at 192, with fp4's 4 decode CTAs an SM: 29%; 2 of 4k at 128:
 * 2-24%); KVA_PWORK, 5120, lies between.  chunk, D >= 1. */
inline bool decode_is_short(uint64_t ctas, uint64_t sms, uint64_t chunk, uint64_t D, uint64_t work)
{
        const uint64_t per_sm = (ctas + sms - 1) / sms;
        /* per_sm * chunk * D <= work * 128, without the product's overflow */
        return per_sm <= work * 128 / (chunk * D);
}

/* n CTAs fill the slots to within an eighth (one CTA an SM: 116 of a
 * 132-SM H200's 132).  Exactly full is rare for real batches, and a launch
 * of 128 CTAs of 8 warps on 132 SMs runs as one wave. */
inline bool fills_wave(uint64_t n, uint64_t slots)
{
        return 8 * n >= 7 * slots;
}

/* Whether the tiled kernel takes 8 warps a CTA (where it has them): its
 * ctas busy CTAs fill a wave of its slots without a split, and the batch's
 * vectors (rows x q heads of a kv head) average at least qv, a CTA's worth,
 * a sequence.  Else 4: with 8, the H200 lost 14-15% where the keys had to
 * be split and gained 2-13% where the grid filled the GPU
 * (kv_attn_prefill.cuh, pwide). */
inline bool take_8warps(uint64_t ctas, uint64_t slots, uint64_t vectors, uint64_t batch, uint64_t qv)
{
        return fills_wave(ctas, slots) && vectors >= batch * qv;
}

/* The tiled kernel's m-tiles per warp.  n1, n2: the busy CTAs with one and
 * two m-tiles; e2: the two-m-tile CTAs the vectors would fill (each kv
 * head's vectors over a CTA's, rounded up once for the batch, so that half
 * full tiles count half); slots1, slots2: their slots; occ2: two-m-tile
 * CTAs per SM; split1: one m-tile's launch splits its keys (plan_splits
 * gives it more than one split).  Two m-tiles (twice the query vectors a
 * CTA) read each K/V fragment from shared memory once for two mmas but make
 * half as many CTAs, and a CTA holds an SM's tensor cores only while the
 * CTAs beside it wait for their tiles.  Measured on the H200
 * (docs/benchmarks.md "Which kernel, and how the tiled kernel is planned"):
 * - two where their CTAs fill a wave;
 * - two where two of them fit an SM, one m-tile's CTAs would be more than
 *   the slots, and e2 fills 7/10 of the slots (24 sequences of 32 rows x 4
 *   q heads: 192 full CTAs, 422 us, against 384 of 64 vectors over two
 *   waves; fp4 at 1 x 4096 x 800: 200, 399 against 469 us), but one below
 *   that (fp4 at 1 x 4096 x 560: 144, 452 against 337 us; 12 x 4048 x 48:
 *   192 of which 96 half full, 399 against 334), where one m-tile splits
 *   (in 4 there); without split1, half the slots as before (12 x 992 x 48,
 *   f16 q: 150 us with two, 178 with one, whose second wave is almost
 *   empty);
 * - two where one m-tile's CTAs fill under half the slots (both split);
 * - else one (1 x 512 rows: 264 CTAs of 64 vectors, 275-357 us, against 136
 *   of 128, about one an SM, 390-400). */
inline int pick_mt(uint64_t n1, uint64_t n2, uint64_t e2, uint64_t slots1, uint64_t slots2, int occ2, bool split1)
{
        const bool half = split1 ? 10 * e2 >= 7 * slots2 : 2 * n2 >= slots2;
        if (fills_wave(n2, slots2) || (occ2 >= 2 && n1 > slots1 && half) || 2 * n1 < slots1)
                return 2;
        return 1;
}

/* The waves a launch of w = CTAs / slots takes, as the H200 ran the decode
 * kernel's uniform launches (docs/benchmarks.md "Warps a head"): the whole
 * waves, and a last partial one counted in full from a fifth of a wave on
 * (its CTAs start as the first ones end, so that only a thin last wave
 * ends early: 3.03 waves of tiles ran as about 3.2, 3.39 as 3.9). */
inline double eff_waves(double w)
{
        const double f = floor(w);
        return f + fmin(1.0, 5.0 * (w - f));
}

/* Whether a decode launch gives each warp a head slot (kv head, group of q
 * heads) of its own and all of its row's tiles (params.hw: a CTA takes 4
 * slots of a row) instead of a CTA a slot whose 4 warps take turns over
 * its tiles.  rows rows of lens[r] keys (the host copy; clamped to [0,
 * cap]), hgt slots a row, slots CTAs at once on the GPU; c0x2 is twice a
 * CTA's own cost (its start: length, page ids, q and the first copies'
 * round trips; the merge) in 16-key warp tiles.
 *
 * Each way is estimated in warp tiles as its CTAs' mean cost times
 * eff_waves, and at least its longest CTA; heads, whose CTAs are 4 times
 * longer, also pay the spread of their lengths when they take more than
 * one wave (a long CTA that starts late runs on alone: a ragged batch of
 * 256 rows of 1/8 to all of 1k or 2k keys ran 7-15% slower with heads).
 * Fewer, longer CTAs pay the start less often and no merge, but balance
 * worse.  Long rows in at most two waves of heads also stream faster
 * with heads than either count says: at 16k and 32k keys, where the starts
 * no longer matter (the two estimates within 1%), heads measured 1.7-3.1%
 * faster for fp8 and bf16 at B = 128, 0.7-5.4% at B = 256 and fp4 11.5% at
 * B = 256, while fp8 and bf16 in 4 to 8 waves (B = 512 at 8k, 1024 at 4k)
 * measured as estimated: so heads' estimate is taken times e = 0.97
 * (KVA_HWE) where the rows average at least 16k keys (KVA_HWEL, what was
 * measured; shorter rows keep the estimate as it was) and heads' CTAs take
 * at most 2 waves.  Heads when that comes out under 99%, and only where the
 * slots of a row fill whole CTAs (hgt a multiple of 4: a CTA with idle
 * warps streams less).  With c0 = 2.5 tiles the estimate picks the faster way at
 * every uniform shape the H200 measured at head_dim 128 with 8 kv heads
 * (docs/benchmarks.md "Warps a head") within 1.6% at B = 96, L = 1k
 * (fp8) and B = 512, L = 8k (bf16).  The launcher asks where the tiles
 * plan has one split and heads' has one, or two in one wave (decode rows,
 * not captured): hchunk, hsplits are then heads' plan, each heads CTA
 * costs its chunk's keys and the reduction KVA_HWRED half tiles more
 * (fp4 at B = 120-132 and 16k-32k keys: 4.5-9% faster with heads' 2
 * splits, docs/benchmarks.md "Heads with 2 splits"). */
inline bool take_heads(const int32_t *lens, uint64_t rows, uint32_t cap, uint64_t hgt, uint64_t slots,
                       uint64_t c0x2, uint32_t hchunk = 0, uint64_t hsplits = 1)
{
        if (slots < 1)
                slots = 1;
        /* tiles in one wave cost their longest CTA, never more than heads'
         * (the loop below would find that; this is the common small batch) */
        if (rows == 0 || hgt == 0 || hgt % 4 != 0 || rows * hgt <= slots)
                return false;
        if (hsplits < 1 || (hsplits > 1 && hchunk == 0))
                return false;
        /* costs in half tiles: a tiles CTA 2 * ceil(len / 64) + c0x2, a
         * heads CTA 2 * ceil(keys / 16) + c0x2 for the keys of its split
         * (hchunk a split; all of the row's with one split); a row's CTAs
         * of one split cost the same */
        uint64_t sa = 0, sb = 0, ma = 0, mb = 0, nb = UINT64_MAX;
        for (uint64_t r = 0; r < rows; r++) {
                const uint64_t len = lens[r] < 0 ? 0 : (uint64_t)lens[r] > cap ? cap : (uint64_t)lens[r];
                const uint64_t ca = 2 * ((len + 63) / 64) + c0x2;
                sa += ca;
                ma = ca > ma ? ca : ma;
                for (uint64_t s = 0; s < hsplits; s++) {
                        const uint64_t lo = s * hchunk;
                        const uint64_t k = hsplits == 1 ? len : len <= lo ? 0 : len - lo < hchunk ? len - lo : hchunk;
                        const uint64_t cb = 2 * ((k + 15) / 16) + c0x2;
                        sb += cb;
                        mb = cb > mb ? cb : mb;
                        nb = cb < nb ? cb : nb;
                }
        }
        const double wa = (double)rows * (double)hgt / (double)slots;
        const double wb = (double)rows * (double)(hgt / 4) * (double)hsplits / (double)slots;
        const double ta = fmax(eff_waves(wa) * (double)sa / (double)rows, (double)ma);
        const double tb = fmax(eff_waves(wb) * (double)sb / ((double)rows * (double)hsplits) +
                                       (wb > 1.0 ? (double)(mb - nb) : 0.0),
                               (double)mb) +
                          (hsplits > 1 ? (double)KVA_HWRED : 0.0);
        /* rows of at least KVA_HWEL keys on average (sb: a row's CTAs over its splits) */
        const bool lng =
                (double)sb >= (double)rows * (2.0 * (double)KVA_HWEL / 16.0 + (double)hsplits * (double)c0x2);
        return (lng && wb <= 2.0 ? KVA_HWE : 1.0) * tb < 0.99 * ta;
}

/* How the keys of a launch are split: chunk keys a split (a multiple of
 * 64: 4 warps x 16 keys, and the tiled kernel's key tiles are 64 or 32),
 * splits of them over the longest sequence's max_len keys. */
struct split_plan {
        uint32_t chunk;
        uint64_t splits;
};

/* Whether a decode launch takes a kv head a warp because its tiles CTAs
 * would share cache lines: in the pool's NHD layout a token's kv heads lie
 * side by side, so where a head's row is rb < 128 bytes (fp4 at head_dim
 * 128 and under, fp8 at 64) two or more tiles CTAs, one a kv head, read
 * halves of the same 128-byte lines, and the fp4 copies ask L2 for whole
 * lines (KVA_PF).  CTAs that run in step share each fetch; long CTAs that
 * drift apart (an SM with one CTA more than its neighbours issues each of
 * them more slowly; a later wave starts them as slots free up) fetch the
 * line once each.  A heads CTA reads its 4 kv heads' rows of a token
 * together, whole lines.  Measured on the H200 (fp4, head_dim 128, 8 kv
 * heads, 16k keys; docs/benchmarks.md "Shared lines"): 58 rows, 464 tiles
 * CTAs on 528 slots, read 1.87 GB from DRAM where heads read 1.21 (ncu)
 * and took 503-520 against 389-397 us; heads was 12-23% faster at 44 to
 * 62 rows but for 48 (3% slower), level at 64 and 66 (more of the SMs
 * with the same CTAs), and 7-13% faster at 128 to 1024 rows of 4k to 32k
 * keys in several waves of tiles; slower only where the tiles CTAs were
 * short (chunks of 1k to 4k keys: 3-7%); at head_dim 64 the launches it
 * moves were 8-23% faster (fp4, and fp8 with its 64-byte rows).  So heads
 * where the tiles chunk tchunk is at least KVA_HWLINE keys and heads'
 * plan fits one wave that has at least the tiles' CTAs or 7/8 of the
 * slots (tn, hn: the tiles and heads plans' CTAs times their splits; hgt
 * a multiple of 4, as in take_heads).  fp8 at head_dim 64 (fp4 false),
 * which waits on memory where fp4 waits on its unpack, counts shorter
 * chunks as long where the tiles plan splits the rows (tsplit):
 * KVA_HWLINE8 = 1024 keys, where heads' plan adds no reduction the tiles
 * do not pay (as the launcher's choice against tiles, docs/benchmarks.md
 * "Timed as the launcher's choice": 12-17% faster at 12 to 40 rows of
 * 8k-32k keys in chunks of 4k to 6.6k on fp8's 660 slots, 6% and 11% at 8
 * rows of 16k and 32k in chunks of 1.7k and 3.3k, 0-8% in chunks of 1k to
 * 1.4k at 4 to 28 rows of 2k-24k keys, level at 5 x 16k); one wave of
 * unsplit tiles keeps KVA_HWLINE / 2 = 4096 (with heads forced: 10%
 * slower at 48 rows of 2k keys, 4-10% at 64 and 82 of 1k, 4-5% faster at 80
 * of 2k).  And it takes heads wherever the tiles take several waves in
 * chunks of at least KVA_HWLINE8MW = 2048 keys and heads' plan fits one
 * wave, however full: heads forced 5-16% faster at 100 to 160 rows of 2k
 * to 4k keys and 14-21% at 128 rows of 4k to 32k keys and 200 of 16k
 * ("Shared lines"), level at 120 and 160 rows of 1k, which stay tiles;
 * fp4 at head_dim 128 ran 1.5-13% slower at 6 of 10 shapes under that
 * rule, and keeps the one above. */
inline bool take_heads_lines(uint64_t rb, uint64_t hgt, uint64_t tchunk, bool tsplit, uint64_t tn, uint64_t hn,
                             uint64_t slots, bool fp4 = true)
{
        const uint64_t least = fp4 ? KVA_HWLINE : tsplit ? KVA_HWLINE8 : KVA_HWLINE / 2;

        if (KVA_HWLINE == 0 || rb >= 128 || hgt == 0 || hgt % 4 != 0 || hn == 0 || hn > slots)
                return false;
        if (!fp4 && KVA_HWMW && tn > slots && tchunk >= KVA_HWLINE8MW)
                return true;
        return tchunk >= least && (hn >= tn || 8 * hn >= 7 * slots);
}

/* The split of max_len keys for ctas busy CTAs on slots.  Under half the
 * slots: split so that the CTAs make about one full wave, chunks of at
 * least 128 keys, at most max_splits.  More than the slots, or with mid
 * more than half of them: up to 4 splits when they leave clearly fewer
 * slots idle in the last wave (1024 CTAs on 396 slots fill 86% of 3 waves,
 * split in 3 they fill 97% of 8), only for chunks of at least floor keys.
 * Measured on the H200: the decode kernel takes 4096 (when fp8 ran 3 CTAs
 * per SM, 3 splits made fp8 at B = 128 2.5% faster at L = 16k and 32k but
 * 13% slower at L = 1k, chunks of 384 keys; a floor of 1024 keys, 3 splits
 * at L = 4k, was not faster); the tiled kernel, whose CTAs work longer on
 * each key (64 to 256 query vectors), 1024 (KVA_PSFLOOR: 36 sequences of
 * 32 rows x 4 q heads, 288 CTAs on 264 slots, 750 -> 613 us in 4 splits),
 * and mid (KVA_PSMID): between half the slots and the slots, one CTA an
 * SM runs alone on many SMs, where its 4 warps leave the SM short of
 * loads in flight; in 4 splits the CTAs keep two an SM to the end (3
 * sequences of 80 rows x 32 kv heads, 192 CTAs on 264 slots: 16k keys
 * 1070 -> 831 us, 4k 283 -> 241; 24 x 32 rows x 4 q heads, 4k keys: 423 ->
 * 381).  ctas >= 1. */
inline split_plan plan_splits(uint64_t ctas, uint64_t slots, uint64_t max_len, uint64_t floor, uint64_t max_splits,
                              uint64_t least = 128, bool mid = false)
{
        uint64_t splits = 1;
        if (2 * ctas <= slots && max_len > least) {
                splits = slots / ctas;
                const uint64_t most = (max_len + least - 1) / least;
                if (splits > most)
                        splits = most;
                if (splits > max_splits)
                        splits = max_splits;
        } else if (ctas > slots || mid) {
                double best = 0.0;
                for (uint64_t sp = 1; sp <= 4 && (sp == 1 || max_len / sp >= floor); sp++) {
                        const uint64_t n = ctas * sp, waves = (n + slots - 1) / slots;
                        const double fill = (double)n / (double)(waves * slots);
                        if (fill > best + 0.05) {
                                best = fill;
                                splits = sp;
                        }
                }
        }
        uint32_t chunk = (uint32_t)((max_len + splits - 1) / splits);
        chunk = (chunk + 63) / 64 * 64;
        if (chunk == 0)
                chunk = 64;
        split_plan r;
        r.chunk = chunk;
        r.splits = max_len ? (max_len + chunk - 1) / chunk : 1;
        return r;
}

/* The decode kernel's least chunk for a launch of ctas CTAs on slots:
 * KVA_DSFLOOR (4096 keys), or KVA_DSFLOOR2 (1024) where the launch is more
 * than one wave and less than KVA_DSMAX% (150) of one.  Unsplit, all of the
 * first wave's CTAs start together and end about together, and the CTAs
 * past it then run on a nearly idle GPU; split in up to 4 (plan_splits),
 * each row's keys take more, shorter CTAs that the block scheduler spreads
 * over the SMs.  Past two waves the CTAs no longer end together and the
 * last ones start early, so the split, whose reduction costs its own, was
 * slower there.  Measured on the H200, read flush, 8 kv heads, rows of 4096
 * keys, 264 slots for bf16 and fp8, 528 for fp4 (docs/benchmarks.md "Rows
 * past a wave"), unsplit -> split, us:
 * - 34 rows (272 CTAs): bf16 157.5 -> 142.4, fp8 e4m3 98.0 -> 90.2;
 * - 40 rows: bf16 180.0 -> 166.3, fp8 107.5 -> 98.0;
 * - 44 rows: bf16 183.4 -> 180.1, fp8 114.2 -> 104.7;
 * - 48 rows (1.45 waves): bf16 192.1 -> 192.5, fp8 115.0 -> 109.0;
 * - 52 rows (1.58 waves): fp8 116.5 -> 120.3, slower;
 * - 67 and 68 rows (2.03 and 2.06 waves): bf16 255.0 -> 264.7 and 259.7 ->
 *   268.3, slower; fp4 (1.02 waves of its slots) 136.9 -> 121.2;
 * - 34 rows of 8192 keys: fp8 160.6 -> 153.2 (4 splits instead of 2);
 * - one wave or less (32 rows), and B = 128 at 1k and 4k: unchanged. */
inline uint64_t decode_floor(uint64_t ctas, uint64_t slots)
{
        if (ctas > slots && 100 * ctas < (uint64_t)KVA_DSMAX * slots)
                return KVA_DSFLOOR2;
        return KVA_DSFLOOR;
}

/* The split of max_len keys as the launcher plans it for either kernel:
 * the tiled kernel's floor, least and mid (KVA_PSFLOOR, KVA_PSMIN,
 * KVA_PSMID), the decode kernel's decode_floor and 128 (see plan_splits).  One
 * place, so that the plans the launcher weighs (pick_mt's split1, the
 * decode kernel's short launch) are the plans it then launches. */
inline split_plan plan_keys(bool tiled, uint64_t ctas, uint64_t slots, uint64_t max_len, uint64_t max_splits)
{
        if (tiled)
                return plan_splits(ctas, slots, max_len, KVA_PSFLOOR, max_splits, KVA_PSMIN, KVA_PSMID != 0);
        return plan_splits(ctas, slots, max_len, decode_floor(ctas, slots), max_splits);
}

/* The decode launcher's heads plan and its choice between it and tiles. */
struct heads_choice {
        bool       heads; /* a kv head a warp (params.hw) */
        uint64_t   hctas; /* heads' CTAs, rows x ceil(hgt / warps) */
        split_plan hsp;   /* and their split (plan_keys on the same slots) */
};

/* For a decode launch of rows rows (not packed extend rows) with hgt head
 * slots a row: tiles are ctas CTAs planned as sp on slots; heads' plan is
 * made here (always: a caller that forces heads launches it).  lens: the
 * rows' lengths (host, clamped to cap), or NULL where they must not be
 * weighed (under capture, or extend rows): then tiles.  rb: bytes of a kv
 * head's row; fp4: the pool is fp4.  Heads where take_heads_lines says so,
 * or where the tiles plan has one split and heads' one, or two in one wave
 * (KVA_HWSPLIT: weighed with its chunks and the reduction), and
 * take_heads' estimate prefers it (not a launch whose heads plan would
 * split more: a few hundred rows of about 8k keys). */
inline heads_choice pick_heads(const int32_t *lens, uint64_t rows, uint32_t cap, uint64_t hgt, uint64_t ctas,
                               const split_plan &sp, uint64_t slots, uint64_t max_len, uint64_t max_splits,
                               uint64_t warps, uint64_t rb, bool fp4)
{
        heads_choice r;

        r.hctas = rows * ((hgt + warps - 1) / warps);
        r.hsp = plan_keys(false, r.hctas, slots, max_len, max_splits);
        r.heads = false;
        if (!KVA_HW || !lens)
                return r;
        const bool hsplit2 = KVA_HWSPLIT && r.hsp.splits == 2 && r.hctas * 2 <= slots;
        r.heads = take_heads_lines(rb, hgt, sp.chunk, sp.splits > 1, ctas * sp.splits, r.hctas * r.hsp.splits,
                                   slots, fp4) ||
                  (sp.splits == 1 && (r.hsp.splits == 1 || hsplit2) &&
                   take_heads(lens, rows, cap, hgt, slots, KVA_HWC0X2, r.hsp.chunk, r.hsp.splits));
        return r;
}

} // namespace kva
#endif
