/* test_reaper.c - the rules by which kvpoold's reaper links sessions to
 * connections and judges them closed (daemon/reaper.c kvd_reaper_judge),
 * sweep by sweep.  The end-to-end check, a daemon whose nng stopped
 * reporting closes, is tests/protocol/test_stuck_teardown.py. */
#include <criterion/criterion.h>
#include "reaper.h"

static struct kvd_reap_snap S(int fd, uint64_t ino, int cand, uint64_t cand_ino)
{
        return (struct kvd_reap_snap){ .pid = 100, .pipe_id = 1, .fd = fd, .ino = ino, .cand = cand,
                                       .cand_ino = cand_ino };
}

static struct kvd_reap_conn C(int fd, uint64_t ino, int open)
{
        return (struct kvd_reap_conn){ .pid = 100, .fd = fd, .ino = ino, .open = open };
}

/* one sweep: the connections' linked marks start clear, as list_conns leaves them */
static void judge(struct kvd_reap_snap *sn, size_t ns, struct kvd_reap_conn *c, size_t nc)
{
        for (size_t k = 0; k < nc; k++)
                c[k].linked = 0;
        kvd_reaper_judge(sn, ns, c, nc);
}

Test(reaper, one_session_and_one_connection_are_linked_by_the_second_sweep)
{
        struct kvd_reap_snap s = S(-1, 0, -1, 0);
        struct kvd_reap_conn c = C(7, 70, 1);

        judge(&s, 1, &c, 1);
        cr_assert_eq(s.fd, -1, "not linked after one sweep");
        cr_assert_eq(s.cand, 7);
        cr_assert_not(s.closed);
        judge(&s, 1, &c, 1);
        cr_assert_eq(s.fd, 7);
        cr_assert_eq(s.ino, 70);
        cr_assert_eq(s.cand, -1);
        cr_assert_not(s.closed);
        c.open = 0; /* the peer closes */
        judge(&s, 1, &c, 1);
        cr_assert(s.closed);
        cr_assert_eq(s.fd, 7, "still linked");
}

Test(reaper, a_linked_session_is_judged_by_its_own_connection_only)
{
        /* the probe (linked, open) and a connection the same process closed */
        struct kvd_reap_snap s[2] = { S(7, 70, -1, 0), S(-1, 0, -1, 0) };
        struct kvd_reap_conn c[2] = { C(7, 70, 1), C(9, 90, 0) };

        judge(s, 2, c, 2);
        cr_assert_not(s[0].closed);
        cr_assert(s[1].closed, "the one free connection is closed");
        cr_assert_eq(s[1].cand, 9);
        judge(s, 2, c, 2);
        cr_assert_eq(s[1].fd, 9);
        cr_assert(s[1].closed);
        cr_assert_not(s[0].closed);
}

Test(reaper, several_unlinked_sessions_are_closed_only_when_every_free_connection_is)
{
        struct kvd_reap_snap s[2] = { S(-1, 0, -1, 0), S(-1, 0, -1, 0) };
        struct kvd_reap_conn c[2] = { C(7, 70, 1), C(9, 90, 0) };

        for (int sweep = 0; sweep < 3; sweep++) {
                judge(s, 2, c, 2);
                cr_assert_not(s[0].closed || s[1].closed, "one connection is open: either could be it");
                cr_assert(s[0].fd < 0 && s[1].fd < 0 && s[0].cand < 0 && s[1].cand < 0, "never linked");
        }
        c[0].open = 0;
        judge(s, 2, c, 2);
        cr_assert(s[0].closed && s[1].closed);
}

Test(reaper, a_reused_descriptor_is_not_taken_for_the_linked_connection)
{
        struct kvd_reap_snap s = S(7, 70, -1, 0);
        struct kvd_reap_conn c = C(7, 71, 1); /* nng closed 7 and accepted another on it */

        judge(&s, 1, &c, 1);
        cr_assert_eq(s.fd, -1, "unlinked");
        cr_assert_eq(s.cand, 7);
        cr_assert_eq(s.cand_ino, 71);
        cr_assert_not(s.closed);
}

Test(reaper, a_pair_seen_by_one_sweep_only_is_never_linked)
{
        /* Session B's connection is already gone (nng closed it; its
         * removal is on the way) while A's new connection is listed but A
         * is not in the snapshot yet: B and A's connection look like a pair
         * for one sweep.  At the next, A is there too: two unlinked
         * sessions, nothing linked, and A's open connection keeps both. */
        struct kvd_reap_snap s[2] = { S(-1, 0, -1, 0), S(-1, 0, -1, 0) };
        struct kvd_reap_conn c = C(11, 110, 1);

        judge(s, 1, &c, 1);
        cr_assert_eq(s[0].cand, 11);
        cr_assert_eq(s[0].fd, -1);
        judge(s, 2, &c, 1);
        cr_assert(s[0].fd < 0 && s[1].fd < 0);
        cr_assert_not(s[0].closed || s[1].closed);
}

Test(reaper, connections_that_are_never_a_sessions_are_not_offered_a_link)
{
        /* the worker's request connection, its events subscription and the
         * connection of its session the reaper ended earlier (nng keeps
         * it): the request session is linked all the same */
        struct kvd_reap_snap s = S(-1, 0, -1, 0);
        struct kvd_reap_conn c[3] = { C(5, 50, 1), C(7, 70, 1), C(9, 90, 0) };

        c[1].aux = c[2].aux = 1;
        judge(&s, 1, c, 3);
        judge(&s, 1, c, 3);
        cr_assert_eq(s.fd, 5);
        cr_assert_not(s.closed);
        c[0].open = 0;
        judge(&s, 1, c, 3);
        cr_assert(s.closed, "judged by its own connection, the open subscription aside");
        /* unlinked, two sessions: an open aux connection still keeps them */
        struct kvd_reap_snap t[2] = { S(-1, 0, -1, 0), S(-1, 0, -1, 0) };
        struct kvd_reap_conn d[3] = { C(5, 50, 0), C(6, 60, 0), C(7, 70, 1) };

        d[2].aux = 1;
        judge(t, 2, d, 3);
        cr_assert_not(t[0].closed || t[1].closed);
}

Test(reaper, sessions_without_any_connection_are_closed)
{
        struct kvd_reap_snap s = S(-1, 0, 3, 30);

        judge(&s, 1, NULL, 0);
        cr_assert(s.closed);
        cr_assert_eq(s.cand, -1);
}
