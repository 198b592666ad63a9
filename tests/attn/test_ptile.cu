/* test_ptile.cu - the extend kernels' grid -> rows mapping
 * (kv_attn_extend.cuh: ptile, ptile_base) on the CPU.
 *
 * A grid of tiles of QV query vectors (rows x q heads of a kv head, in (row,
 * head) order): the tiled kernel's (QV = 64 to 256, a tile may cut a row's
 * heads) and the decode kernel's packed rows (QV = 8 / G * G, whole rows).
 * The launcher (kv_attn_decode.cu) sizes the grid with ptile_grid and, for
 * packed rows, plans its splits on ptile_busy's count of non-empty tiles.
 * Checked on random batches (sequences of 0 to 40 new rows, runs of empty
 * ones): every vector of every sequence lies in exactly one tile, of its
 * own sequence; base(batch) is ptile_grid; the non-empty tiles are as
 * many as ptile_busy counts; packed tiles start
 * on a row; each vector's horizon is seq_len - n_b + row + 1, clamped to the
 * page table.  Then device arrays that disagree with what the launcher
 * checked (qo_indptr decreasing, negative or past the rows; lengths negative
 * or past the table): every non-empty tile stays inside the sequences, the
 * rows of q and the page table.
 *
 * Runs without a GPU (suite unit); exit status 0 when everything holds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kv_attn_extend.cuh"

static int failures, cases;

#define CHECK(cond, ...)                                 \
        do {                                             \
                if (!(cond)) {                           \
                        if (failures++ < 20) {           \
                                printf("FAIL: ");        \
                                printf(__VA_ARGS__);     \
                                printf("\n");            \
                        }                                \
                }                                        \
        } while (0)

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint32_t rnd(uint32_t n)
{
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        return (uint32_t)(rng_state % n);
}

static kva::params make(uint32_t B, const int32_t *qo, const int32_t *lens, uint32_t G, uint32_t rows, uint32_t cap)
{
        kva::params p;
        memset(&p, 0, sizeof p);
        p.qo_indptr = qo;
        p.seq_lens = lens;
        p.batch = B;
        p.G = G;
        p.rows = rows;
        p.page_size = 16;
        p.max_pages = cap / 16;
        return p;
}

/* One batch whose arrays are what the launcher checked. */
static void consistent(uint32_t B, const int32_t *qo, const int32_t *lens, uint32_t G, int QV, bool packed,
                       uint32_t cap)
{
        const uint32_t rows = (uint32_t)qo[B];
        const kva::params p = make(B, qo, lens, G, rows, cap);
        const uint64_t bound = kva::ptile_grid(B, rows, G, QV); /* the launcher's grid */
        const uint64_t want_nonempty = kva::ptile_busy(qo, B, G, QV);
        uint8_t *seen = (uint8_t *)calloc((size_t)rows * G + 1, 1);
        uint64_t nonempty = 0;

        cases++;
        CHECK(kva::ptile_base(p, B, QV) == bound, "B=%u G=%u QV=%d: base(B) %llu, the launcher's grid %llu", B, G,
              QV, (unsigned long long)kva::ptile_base(p, B, QV), (unsigned long long)bound);
        for (uint64_t j = 0; j < bound; j++) {
                const kva::ptile tl(p, (uint32_t)j, QV);
                if (tl.v0 >= tl.nv)
                        continue;
                nonempty++;
                CHECK(tl.b < B && tl.i0 == qo[tl.b] && tl.nb == qo[tl.b + 1] - qo[tl.b],
                      "B=%u G=%u QV=%d tile %llu: sequence %u rows [%lld, +%lld)", B, G, QV, (unsigned long long)j,
                      tl.b, (long long)tl.i0, (long long)tl.nb);
                if (packed)
                        CHECK(tl.v0 % G == 0, "G=%u QV=%d tile %llu starts inside a row (vector %llu)", G, QV,
                              (unsigned long long)j, (unsigned long long)tl.v0);
                const uint64_t vend = tl.v0 + QV < tl.nv ? tl.v0 + QV : tl.nv;
                for (uint64_t v = tl.v0; v < vend; v++) {
                        const uint64_t gv = (uint64_t)tl.i0 * G + v; /* the vector's index over all rows */
                        if (gv < (uint64_t)rows * G)
                                seen[gv]++;
                        int64_t want = (int64_t)lens[tl.b] - tl.nb + (int64_t)(v / G) + 1;
                        want = want < 0 ? 0 : want > (int64_t)cap ? (int64_t)cap : want;
                        CHECK(tl.horizon(p, v) == (uint32_t)want, "G=%u QV=%d vector %llu of sequence %u: horizon %u, want %lld",
                              G, QV, (unsigned long long)v, tl.b, tl.horizon(p, v), (long long)want);
                }
        }
        for (uint64_t i = 0; i < (uint64_t)rows * G; i++)
                CHECK(seen[i] == 1, "B=%u G=%u QV=%d: vector %llu (row %llu) in %u tiles", B, G, QV,
                      (unsigned long long)i, (unsigned long long)(i / G), seen[i]);
        CHECK(nonempty == want_nonempty, "B=%u G=%u QV=%d: %llu non-empty tiles, the launcher counts %llu", B, G, QV,
              (unsigned long long)nonempty, (unsigned long long)want_nonempty);
        free(seen);
}

/* Device arrays that disagree with the host copies the launcher checked:
 * the kernels must still stay inside q's rows and the page table. */
static void garbage(uint32_t B, uint32_t rows, uint32_t G, int QV, uint32_t cap)
{
        int32_t *qo = (int32_t *)malloc(sizeof(int32_t) * (B + 1)), *lens = (int32_t *)malloc(sizeof(int32_t) * B);
        for (uint32_t b = 0; b <= B; b++) {
                const uint32_t k = rnd(6);
                qo[b] = k == 0 ? -(int32_t)rnd(100) : k == 1 ? (int32_t)(rows + rnd(1000)) : k == 2 ? INT32_MAX
                                                                                                 : (int32_t)rnd(rows + 1);
        }
        for (uint32_t b = 0; b < B; b++) {
                const uint32_t k = rnd(4);
                lens[b] = k == 0 ? -(int32_t)rnd(1000) : k == 1 ? INT32_MAX : (int32_t)rnd(cap + 100);
        }
        const kva::params p = make(B, qo, lens, G, rows, cap);
        const uint64_t bound = kva::ptile_grid(B, rows, G, QV);

        cases++;
        for (uint64_t j = 0; j < bound + 4; j++) {
                const kva::ptile tl(p, (uint32_t)j, QV);
                if (tl.v0 >= tl.nv)
                        continue;
                const uint64_t vend = tl.v0 + QV < tl.nv ? tl.v0 + QV : tl.nv;
                CHECK(tl.b < B && tl.i0 >= 0 && tl.nb >= 0 && (uint64_t)tl.i0 + (vend - 1) / G < rows,
                      "garbage B=%u rows=%u G=%u QV=%d tile %llu: sequence %u, rows from %lld, last vector %llu", B,
                      rows, G, QV, (unsigned long long)j, tl.b, (long long)tl.i0, (unsigned long long)(vend - 1));
                CHECK(tl.horizon(p, tl.v0) <= cap && tl.horizon(p, vend - 1) <= cap,
                      "garbage tile %llu: horizons %u..%u past the table's %u keys", (unsigned long long)j,
                      tl.horizon(p, tl.v0), tl.horizon(p, vend - 1), cap);
        }
        free(qo);
        free(lens);
}

int main(void)
{
        static const uint32_t Gs[] = { 1, 2, 3, 4, 5, 8, 12 };
        static const int QVs[] = { 64, 128, 256 };
        enum { BMAX = 60 };
        int32_t qo[BMAX + 1], lens[BMAX];

        for (int round = 0; round < 400; round++) {
                const uint32_t B = 1 + rnd(BMAX), cap = 16 * (3 + rnd(200)); /* >= 48 keys: >= n_b */
                qo[0] = 0;
                for (uint32_t b = 0; b < B; b++) {
                        /* runs of empty sequences, one-row ones, a few up to 40 */
                        const uint32_t k = rnd(4);
                        const int32_t n = k == 0 ? 0 : k == 1 ? 1 : (int32_t)rnd(41);
                        qo[b + 1] = qo[b] + n;
                        lens[b] = n + (int32_t)rnd(cap - n + 1); /* the launcher's check: n_b <= len <= cap */
                }
                for (const uint32_t G : Gs) {
                        if (G <= 4) /* the decode kernel's packed rows */
                                consistent(B, qo, lens, G, (int)(8 / G * G), true, cap);
                        for (const int QV : QVs) /* the tiled kernel's tiles */
                                consistent(B, qo, lens, G, QV, false, cap);
                }
                garbage(B, 1 + rnd(300), Gs[rnd(7)], round % 2 ? 8 : QVs[rnd(3)], cap);
        }
        printf("test_ptile: %d cases, %d failures\n", cases, failures);
        return failures ? 1 : 0;
}
