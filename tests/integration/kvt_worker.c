/* kvt_worker.c - a worker process for the integration tests, driven through
 * argv, stdin and stdout.  (The tests exec it rather than fork: nng refuses to
 * run in a forked child of a process that already used it.)
 *
 *   kvt-worker hold URL POOL N W
 *       connects, attaches POOL, allocates N pages, fills every byte of their
 *       K and V arrays in every layer with pattern W through the mapped memory,
 *       prints "PAGES p0 p1 ...", then waits for a line on stdin: "free" frees
 *       the pages (prints "FREED"), EOF exits without freeing.
 *   kvt-worker verify URL POOL W p0 p1 ...
 *       connects, attaches, checks pattern W in the pages; exit 0 if intact.
 *
 * Exit status: 0 ok, 1 failure (a message on stderr), 2 usage.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kvclient.h"
#include "pattern.h"

static int fail(kvc_client *c, const char *what, int rv)
{
        fprintf(stderr, "kvt-worker %d: %s: %d %s\n", (int)getpid(), what, rv, kvc_errmsg(c));
        return 1;
}

static int hold(const char *url, const char *pool, uint32_t n, uint32_t w)
{
        kvc_client *c;
        kvc_pool *p;
        int32_t *pages = calloc(n, sizeof *pages);
        char line[64];
        int rv;

        if (pages == NULL)
                return 1;
        if ((rv = kvc_connect(url, "kvt-worker", NULL, &c)) != 0)
                return fail(NULL, "connect", rv);
        if ((rv = kvc_attach(c, pool, &p)) != 0)
                return fail(c, "attach", rv);
        if ((rv = kvc_alloc(p, n, pages)) != 0)
                return fail(c, "alloc", rv);
        for (uint32_t i = 0; i < n; i++)
                kvt_pattern_fill(kvc_pool_get_desc(p), pages[i], w, i);
        printf("PAGES");
        for (uint32_t i = 0; i < n; i++)
                printf(" %d", pages[i]);
        printf("\n");
        fflush(stdout);
        if (fgets(line, sizeof line, stdin) == NULL)
                return 0; /* EOF: exit holding the pages; the daemon drops them */
        if (strncmp(line, "free", 4) == 0) {
                if ((rv = kvc_free(p, n, pages)) != 0)
                        return fail(c, "free", rv);
                printf("FREED\n");
                fflush(stdout);
        }
        kvc_disconnect(c);
        free(pages);
        return 0;
}

static int verify(const char *url, const char *pool, uint32_t w, int n, char **ids)
{
        kvc_client *c;
        kvc_pool *p;
        int rv, bad = 0;

        if ((rv = kvc_connect(url, "kvt-verifier", NULL, &c)) != 0)
                return fail(NULL, "connect", rv);
        if ((rv = kvc_attach(c, pool, &p)) != 0)
                return fail(c, "attach", rv);
        for (int i = 0; i < n; i++) {
                int64_t at = kvt_pattern_check(kvc_pool_get_desc(p), atoi(ids[i]), w, (uint32_t)i);

                if (at >= 0) {
                        fprintf(stderr, "kvt-worker: page %s (index %d of worker %u): first wrong "
                                "byte at %lld\n", ids[i], i, w, (long long)at);
                        bad++;
                }
        }
        kvc_disconnect(c);
        return bad ? 1 : 0;
}

int main(int argc, char **argv)
{
        if (argc == 6 && strcmp(argv[1], "hold") == 0)
                return hold(argv[2], argv[3], (uint32_t)atoi(argv[4]), (uint32_t)atoi(argv[5]));
        if (argc >= 5 && strcmp(argv[1], "verify") == 0)
                return verify(argv[2], argv[3], (uint32_t)atoi(argv[4]), argc - 5, argv + 5);
        fprintf(stderr, "usage: kvt-worker hold URL POOL N W | verify URL POOL W PAGE...\n");
        return 2;
}
