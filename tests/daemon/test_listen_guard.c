/* test_listen_guard.c - the listener guard's pure rules (daemon/listen_guard.c):
 * how long it may go on taking over (kvd_guard_headroom: descriptors under
 * 3/4 of RLIMIT_NOFILE's soft limit, which only holds it back until
 * descriptors are freed, and KVD_GUARD_CEILING take-overs at most, for
 * good) and the names its new listeners are bound to (kvd_guard_name)
 * with many digits.  The end-to-end checks, a kvpoold that takes over more
 * than 8 times and one that waits for descriptors, are
 * tests/protocol/test_listen_guard.py. */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/un.h>
#include <criterion/criterion.h>
#include "listen_guard.h"

Test(listen_guard, takes_over_below_three_quarters_of_the_descriptor_limit)
{
        char why[200] = "untouched";

        cr_assert_eq(kvd_guard_headroom(10, 1024, 0, why, sizeof why), 1);
        cr_assert_eq(kvd_guard_headroom(767, 1024, 8, why, sizeof why), 1, "not capped at 8 any more");
        cr_assert_eq(kvd_guard_headroom(767, 1024, 500, why, sizeof why), 1);
        cr_assert_str_eq(why, "untouched", "why untouched when it may");
        cr_assert_eq(kvd_guard_headroom(768, 1024, 0, why, sizeof why), 0, "3/4 of 1024 open: no more");
        cr_assert(strstr(why, "descriptors 768 of limit 1024"), "%s", why);
        cr_assert_eq(kvd_guard_headroom(5000, 1024, 0, why, sizeof why), 0);
        /* a soft limit as small as systemd's default 1024 and as large as a
         * container's 2^30: the same fraction, no overflow near ULONG_MAX */
        cr_assert_eq(kvd_guard_headroom(805306367, 1UL << 30, 0, why, sizeof why), 1);
        cr_assert_eq(kvd_guard_headroom(805306368, 1UL << 30, 0, why, sizeof why), 0);
        cr_assert_eq(kvd_guard_headroom(LONG_MAX, ULONG_MAX, 0, why, sizeof why), 1);
}

Test(listen_guard, an_unknown_count_or_limit_leaves_only_the_ceiling)
{
        char why[200];

        cr_assert_eq(kvd_guard_headroom(-ENOENT, 1024, 100, why, sizeof why), 1, "no /proc/self/fd");
        cr_assert_eq(kvd_guard_headroom(100000, 0, 100, why, sizeof why), 1, "no limit");
        cr_assert_eq(kvd_guard_headroom(-ENOENT, 0, KVD_GUARD_CEILING - 1, why, sizeof why), 1);
        cr_assert_eq(kvd_guard_headroom(-ENOENT, 0, KVD_GUARD_CEILING, why, sizeof why), -1);
        cr_assert(strstr(why, "take-overs tried"), "%s", why);
        cr_assert_eq(kvd_guard_headroom(10, 1024, KVD_GUARD_CEILING, why, sizeof why), -1,
                     "the ceiling holds with room");
        cr_assert_gt(KVD_GUARD_CEILING, 8);
}

/* Live sessions hold descriptors too, and leave: short of them the guard
 * waits (0) and takes over once they are freed; only the ceiling is for
 * good (-1), and it comes first. */
Test(listen_guard, short_of_descriptors_is_not_for_good_the_ceiling_is)
{
        char why[200];

        cr_assert_eq(kvd_guard_headroom(768, 1024, 0, why, sizeof why), 0, "waits, does not give up");
        cr_assert_eq(kvd_guard_headroom(768, 1024, KVD_GUARD_CEILING - 1, why, sizeof why), 0);
        cr_assert_eq(kvd_guard_headroom(768, 1024, KVD_GUARD_CEILING, why, sizeof why), -1, "short and at the ceiling");
        cr_assert(strstr(why, "take-overs tried"), "%s", why);
        cr_assert_eq(kvd_guard_headroom(767, 1024, 0, why, sizeof why), 1, "and once one is freed, takes over");
}

/* No descriptor left to count them with (opendir of /proc/self/fd gets
 * EMFILE, or ENFILE system-wide): no room now, whatever the limit says,
 * and not for good. */
Test(listen_guard, no_descriptor_left_is_no_room_now)
{
        char why[200] = "";

        cr_assert_eq(kvd_guard_headroom(-EMFILE, 1024, 0, why, sizeof why), 0);
        cr_assert(strstr(why, "EMFILE") && strstr(why, "1024"), "%s", why);
        cr_assert_eq(kvd_guard_headroom(-EMFILE, 0, 0, why, sizeof why), 0, "no limit known");
        cr_assert(strstr(why, "EMFILE"), "%s", why);
        cr_assert_eq(kvd_guard_headroom(-ENFILE, 0, 0, why, sizeof why), 0, "the system's file table full");
        cr_assert(strstr(why, "ENFILE"), "%s", why);
        cr_assert_eq(kvd_guard_headroom(-EMFILE, 1024, KVD_GUARD_CEILING, why, sizeof why), -1);
        cr_assert_eq(kvd_guard_headroom(-ENOENT, 1024, 0, why, sizeof why), 1,
                     "unknown for another reason: the ceiling alone");
}

/* a path of exactly len bytes: base, then 'd's, then /leaf */
static void path_of(char *p, size_t len, const char *leaf)
{
        const char *base = "/tmp/kvtest-guard/";

        memset(p, 0, len + 1);
        strcpy(p, base);
        memset(p + strlen(base), 'd', len - strlen(base) - 1 - strlen(leaf));
        strcat(p, "/");
        strcat(p, leaf);
        cr_assert_eq(strlen(p), len);
}

Test(listen_guard, names_take_any_number_where_they_fit)
{
        char name[160], p[120], dir[120];

        cr_assert_eq(kvd_guard_name("/run/kvpool/kvpool.sock", 4095, name, sizeof name), 0);
        cr_assert_str_eq(name, "/run/kvpool/kvpool.sock.4095");
        cr_assert_eq(kvd_guard_name("/run/kvpool/kvpool.sock", UINT_MAX, name, sizeof name), 0);
        cr_assert_str_eq(name, "/run/kvpool/kvpool.sock.4294967295");
        /* 100 bytes: <path>.<n> fits sun_path (107 and its NUL) up to 6 digits */
        path_of(p, 100, "kvpool.sock");
        cr_assert_eq(kvd_guard_name(p, 123456, name, sizeof name), 0);
        cr_assert_eq(strlen(name), 107);
        cr_assert_eq(strncmp(name, p, 100), 0);
        cr_assert_eq(kvd_guard_name(p, 1234567, name, sizeof name), 0);
        snprintf(dir, sizeof dir, "%.*s/.kvgk1234567", 100 - 12, p);
        cr_assert_str_eq(name, dir, "the shorter name beside it");
        /* 107 bytes, leaf s.sock (the folder 100): .kvgs<n> up to 1 digit,
         * .s<n> up to 4 */
        path_of(p, 107, "s.sock");
        cr_assert_eq(kvd_guard_name(p, 9, name, sizeof name), 0);
        snprintf(dir, sizeof dir, "%.*s/.kvgs9", 100, p);
        cr_assert_str_eq(name, dir);
        cr_assert_eq(kvd_guard_name(p, 10, name, sizeof name), 0);
        snprintf(dir, sizeof dir, "%.*s/.s10", 100, p);
        cr_assert_str_eq(name, dir);
        cr_assert_eq(kvd_guard_name(p, 4095, name, sizeof name), 0);
        cr_assert_eq(strlen(name), 107);
        /* past every form: refused, never cut to a name that fits */
        cr_assert_eq(kvd_guard_name(p, 10000, name, sizeof name), -ENAMETOOLONG);
        cr_assert_geq(strlen(name), sizeof(((struct sockaddr_un *)0)->sun_path));
        /* a buffer too small for the name is refused too */
        cr_assert_eq(kvd_guard_name("/run/kvpool/kvpool.sock", 12, name, 16), -ENAMETOOLONG);
}
