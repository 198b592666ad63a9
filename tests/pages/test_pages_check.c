/* test_pages_check.c - kvd_pages_check() must catch a broken table.  The
 * module is compiled into this test (#include) so that a test can damage its
 * internals one invariant at a time and see the checker object. */
#include <criterion/criterion.h>

#include "../../daemon/pages.c"

static struct kvd_pages *busy(void)
{
        /* 8 pages: 0, 1 held by session 1 and published; 4 held by session 2;
         * 3 published and idle; 2 and 5..7 free */
        struct kvd_pages *t = NULL;
        cr_assert_eq(kvd_pages_new(8, NULL, &t), 0);
        uint32_t a[4], b[1];
        cr_assert_eq(kvd_pages_alloc(t, 1, 4, a), 0);
        cr_assert_eq(kvd_pages_alloc(t, 2, 1, b), 0);
        uint32_t pub[3] = { a[0], a[1], a[3] };
        uint8_t pk[3][KVD_KEY_LEN] = { { 1 }, { 2 }, { 4 } };
        cr_assert_eq(kvd_pages_publish(t, 1, NULL, 3, pub, pk, NULL), 3);
        uint32_t rel[2] = { a[2], a[3] };
        cr_assert_eq(kvd_pages_release(t, 1, 2, rel), 0);
        cr_assert_eq(kvd_pages_check(t), 0);
        return t;
}

static uint32_t some_free(struct kvd_pages *t) { return t->free_head; }

Test(pages_check, refcount_mismatch)
{
        struct kvd_pages *t = busy();
        t->pages[0].ref++;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, stats_mismatch)
{
        struct kvd_pages *t = busy();
        t->st.free--;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        t->st.free++;
        t->st.cached++;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, free_list_loop)
{
        struct kvd_pages *t = busy();
        uint32_t f = some_free(t);
        t->pages[t->pages[f].next].next = f;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, page_lost_from_free_list)
{
        struct kvd_pages *t = busy();
        t->free_head = t->pages[t->free_head].next;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, lru_back_link)
{
        struct kvd_pages *t = busy();
        cr_assert_neq(t->lru_head, NIL);
        t->lru_tail = NIL;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, key_table_entry_missing)
{
        struct kvd_pages *t = busy();
        for (uint32_t i = 0; i <= t->kmask; i++)
                if (t->slots[i] == 1)
                        t->slots[i] = 0;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, key_changed_under_table)
{
        struct kvd_pages *t = busy();
        t->keys[0].key[5] ^= 1;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, holding_count_wrong)
{
        struct kvd_pages *t = busy();
        struct sess *s = sess_get(t, 2);
        cr_assert_not_null(s);
        s->total++;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

Test(pages_check, held_page_on_free_list)
{
        struct kvd_pages *t = busy();
        /* session 2's page (alloc hands out 0..3, then 4) also on the free list */
        uint32_t id = 4;
        cr_assert_eq(t->pages[id].ref, 1);
        t->pages[id].next = t->free_head;
        t->pages[id].on_free = 1;
        t->free_head = id;
        t->st.free++;
        cr_assert_eq(kvd_pages_check(t), -EUCLEAN);
        kvd_pages_free(t);
}

/* Not a checker test, but one that needs the internals: reference counts
 * are u32, and a client piles them up with LOOKUPs of one key repeated (8192
 * references a request, 2^32 in about half a million requests).  Fast-forward
 * a session to just below 2^32 references on one page: what would wrap a
 * counter must be refused, because a wrapped refcount sends a page that is
 * still held to the LRU or the free list, where an alloc hands it out again. */
Test(pages_check, reference_counts_never_wrap)
{
        struct kvd_pages *t = NULL;
        uint8_t keys[2][KVD_KEY_LEN] = { { 7 }, { 7 } };
        uint32_t id, got[2];

        cr_assert_eq(kvd_pages_new(4, NULL, &t), 0);
        cr_assert_eq(kvd_pages_alloc(t, 1, 1, &id), 0);
        cr_assert_eq(kvd_pages_publish(t, 1, NULL, 1, &id, keys, NULL), 1);
        struct sess *s = sess_get(t, 1);
        s->held.v[map_find(&s->held, id)] = UINT32_MAX - 2;
        s->total = UINT32_MAX - 2;
        t->pages[id].ref = UINT32_MAX - 2;
        cr_assert_eq(kvd_pages_check(t), 0);

        /* up to the limit: fine */
        cr_assert_eq(kvd_pages_lookup(t, 1, NULL, 2, keys, got), 2);
        cr_assert_eq(t->pages[id].ref, UINT32_MAX);
        cr_assert_eq(kvd_pages_session_count(t, 1), UINT32_MAX);
        cr_assert_eq(kvd_pages_check(t), 0);
        /* one more reference on the page, by anyone: refused, nothing changes */
        cr_assert_eq(kvd_pages_lookup(t, 1, NULL, 1, keys, got), -EOVERFLOW);
        cr_assert_eq(kvd_pages_lookup(t, 2, NULL, 1, keys, got), -EOVERFLOW);
        cr_assert_eq(t->pages[id].ref, UINT32_MAX);
        cr_assert_eq(kvd_pages_session_count(t, 2), 0);
        /* one more reference for the session, on another page: refused */
        cr_assert_eq(kvd_pages_alloc(t, 1, 1, got), -EOVERFLOW);
        cr_assert_eq(kvd_pages_session_count(t, 1), UINT32_MAX);
        cr_assert_eq(kvd_pages_check(t), 0);
        /* others are not affected, and the references all go away */
        cr_assert_eq(kvd_pages_alloc(t, 2, 1, got), 0);
        cr_assert_eq(kvd_pages_drop_session(t, 1), UINT32_MAX);
        cr_assert_eq(t->pages[id].ref, 0);
        cr_assert_eq(kvd_pages_check(t), 0);
        kvd_pages_free(t);
}
