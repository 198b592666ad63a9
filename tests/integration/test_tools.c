/* test_tools.c - kvpoolctl and kvpool-demo-worker against a live kvpoold. */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"

static struct kvt_daemon D;

static void cleanup(void)
{
        if (D.dir[0])
                kvt_daemon_cleanup(&D);
}

Test(integration, kvpoolctl_status_table_and_json, .fini = cleanup, .timeout = 60)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        const char *pools[] = { kvt_pool_spec(0, "ctlpool", "fp8_e4m3", "2MiB"), NULL };
        kvc_client *c;
        kvc_pool *p;
        int32_t pages[3];
        char *out = NULL;
        cJSON *doc, *it;
        int found = 0;

        cr_assert_not_null(ctl);
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        cr_assert_eq(kvc_connect(D.url, "ctl-visible", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "ctlpool", &p), 0);
        cr_assert_eq(kvc_alloc(p, 3, pages), 0);
        {
                char *argv[] = { (char *)ctl, "--socket", D.url, "status", NULL };

                cr_assert_eq(kvt_run(argv, &out), 0, "kvpoolctl status failed:\n%s", out);
                cr_assert(strstr(out, "ctlpool") != NULL, "no pool in:\n%s", out);
                cr_assert(strstr(out, "fp8_e4m3") != NULL, "no dtype in:\n%s", out);
                cr_assert(strstr(out, "ctl-visible") != NULL, "no client in:\n%s", out);
                cr_assert(strstr(out, "2x2x64") != NULL, "no geometry in:\n%s", out);
                free(out);
        }
        {
                char *argv[] = { (char *)ctl, "--socket", D.url, "status", "--json", NULL };

                cr_assert_eq(kvt_run(argv, &out), 0, "kvpoolctl status --json failed:\n%s", out);
                doc = cJSON_Parse(out);
                cr_assert_not_null(doc, "not JSON:\n%s", out);
                it = cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "pools"), 0);
                cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(it, "name")), "ctlpool");
                cJSON_ArrayForEach(it, cJSON_GetObjectItem(doc, "clients")) {
                        const char *name = cJSON_GetStringValue(cJSON_GetObjectItem(it, "name"));

                        if (name && strcmp(name, "ctl-visible") == 0) {
                                found = 1;
                                cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(it, "pages_held")), 3);
                                cr_assert_eq(cJSON_GetNumberValue(cJSON_GetObjectItem(it, "pid")), getpid());
                        }
                }
                cr_assert(found, "client missing in:\n%s", out);
                cJSON_Delete(doc);
                free(out);
        }
        {
                /* KVPOOL_SOCKET is the default when --socket is absent. */
                char *argv[] = { (char *)ctl, "status", NULL };

                setenv("KVPOOL_SOCKET", D.url, 1);
                cr_assert_eq(kvt_run(argv, &out), 0, "%s", out);
                unsetenv("KVPOOL_SOCKET");
                free(out);
        }
        kvc_disconnect(c);
}

/* With more clients than STATUS lists ($KVPOOLD_STATUS_CLIENTS), kvpoolctl
 * says how many it does not show. */
Test(integration, kvpoolctl_status_says_what_it_does_not_list, .fini = cleanup, .timeout = 60)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        const char *pools[] = { kvt_pool_spec(0, "ctlpool", "fp8_e4m3", "2MiB"), NULL };
        char *argv[] = { (char *)ctl, "--socket", NULL, "status", NULL };
        kvc_client *c;
        char *out = NULL;

        cr_assert_not_null(ctl);
        cr_assert_eq(setenv("KVPOOLD_STATUS_CLIENTS", "1", 1), 0);
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        unsetenv("KVPOOLD_STATUS_CLIENTS");
        cr_assert_eq(kvc_connect(D.url, "ctl-oldest", NULL, &c), 0);
        argv[2] = D.url;
        cr_assert_eq(kvt_run(argv, &out), 0, "kvpoolctl status failed:\n%s", out);
        cr_assert(strstr(out, "ctl-oldest") != NULL, "the oldest client missing in:\n%s", out);
        cr_assert(strstr(out, "... and 1 more clients (STATUS lists the 1 oldest)") != NULL,
                  "no line for the client not listed in:\n%s", out);
        free(out);
        kvc_disconnect(c);
}

Test(integration, kvpoolctl_metrics, .fini = cleanup, .timeout = 60)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        const char *pools[] = { kvt_pool_spec(0, "mpool", "bf16", "2MiB"), NULL };
        char *out = NULL;

        cr_assert_not_null(ctl);
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        char *argv[] = { (char *)ctl, "--socket", D.url, "metrics", NULL };

        cr_assert_eq(kvt_run(argv, &out), 0, "kvpoolctl metrics failed:\n%s", out);
        cr_assert(strstr(out, "# TYPE") != NULL, "no Prometheus text:\n%s", out);
        cr_assert(strstr(out, "mpool") != NULL, "pool not in the metrics:\n%s", out);
        free(out);
        /* Output that cannot be written is a failure, not a silent success
         * (a script redirecting it to a full disk must hear about it). */
        const char *const cmds[][2] = { { "metrics", NULL }, { "status", "--json" }, { "status", NULL } };
        for (size_t k = 0; k < sizeof cmds / sizeof cmds[0]; k++) {
                char *sargv[] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" > /dev/full", (char *)ctl, "--socket", D.url,
                                  (char *)cmds[k][0], (char *)cmds[k][1], NULL };

                cr_assert_eq(kvt_run(sargv, &out), 1, "%s %s > /dev/full:\n%s", cmds[k][0],
                             cmds[k][1] ? cmds[k][1] : "", out);
                cr_assert(strstr(out, "kvpoolctl: cannot write the output") != NULL, "no message:\n%s", out);
                free(out);
        }
}

Test(integration, kvpoolctl_without_daemon_and_bad_usage, .timeout = 30)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        char url[128], *out = NULL;

        cr_assert_not_null(ctl);
        snprintf(url, sizeof url, "ipc:///tmp/kvtest-%d-absent.sock", (int)getpid());
        {
                char *argv[] = { (char *)ctl, "--socket", url, "status", NULL };

                cr_assert_eq(kvt_run(argv, &out), 1, "%s", out);
                cr_assert(strstr(out, "kvpoolctl: cannot reach kvpoold at ") != NULL, "%s", out);
                cr_assert(strstr(out, url) != NULL, "%s", out);
                free(out);
        }
        {
                char *argv[] = { (char *)ctl, "--socket", url, "frobnicate", NULL };

                cr_assert_eq(kvt_run(argv, &out), 2, "%s", out);
                cr_assert(strstr(out, "usage:") != NULL, "%s", out);
                free(out);
        }
        {
                /* a malformed URL is a usage error (2) naming the option
                 * and, as kvpoold says it (the same check), what is wrong,
                 * not a daemon that is not there (1); an explicitly empty
                 * one is not silently replaced by the default */
                const char *bad[][4] = {
                        { "--socket", "foo", "status", "expected an nng URL" },
                        { "--socket=", NULL, "status", "the URL is empty" },
                        { "--socket", "1pc:x", "metrics", "expected an nng URL" },
                        { "--socket", "bogus://x", "status", "expected an nng URL" },
                        { "--socket", "tcp://127.0.0.1:99999", "status", "port must be a number in 0..65535" },
                        { "--socket", "ipc://", "status", "nothing after ://" },
                        { "--events", "foo", "events", "expected an nng URL" },
                        { "--events=", NULL, "events", "the URL is empty" },
                };

                for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
                        char *argv[5] = { (char *)ctl, (char *)bad[k][0], NULL, NULL, NULL };
                        const char *opt = strncmp(bad[k][0], "--socket", 8) == 0 ? "--socket" : "--events";

                        argv[2] = (char *)(bad[k][1] ? bad[k][1] : bad[k][2]);
                        argv[3] = bad[k][1] ? (char *)bad[k][2] : NULL;
                        cr_assert_eq(kvt_run(argv, &out), 2, "%s %s: %s", bad[k][0], argv[2], out);
                        cr_assert(strstr(out, opt) != NULL && strstr(out, bad[k][3]) != NULL &&
                                          strstr(out, "usage:") != NULL,
                                  "%s", out);
                        free(out);
                }
        }
        {
                char *argv[] = { (char *)ctl, "--bogus", "status", NULL };

                cr_assert_eq(kvt_run(argv, &out), 2, "%s", out);
                cr_assert(strstr(out, "--bogus") != NULL, "%s", out);
                free(out);
        }
        {
                char *argv[] = { (char *)ctl, "status", "--jsno", NULL };

                cr_assert_eq(kvt_run(argv, &out), 2, "%s", out);
                free(out);
        }
        {
                /* words after help, -h, -V are usage errors too; a count
                 * is digits only (no sign, no leading blank) */
                const char *bad[][4] = {
                        { "help", "extra", NULL, "help takes no arguments" },
                        { "-h", "extra", NULL, "-h takes nothing after it" },
                        { "--version", "x", NULL, "--version takes nothing after it" },
                        { "events", "--count", "+5", "'+5' is not a positive number" },
                        { "events", "--count", " 5", "' 5' is not a positive number" },
                };

                for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
                        char *argv[] = { (char *)ctl, "--socket", url, (char *)bad[k][0], (char *)bad[k][1],
                                         (char *)bad[k][2], NULL };

                        cr_assert_eq(kvt_run(argv, &out), 2, "%s %s: %s", bad[k][0], bad[k][1], out);
                        cr_assert(strstr(out, bad[k][3]) != NULL, "%s %s: %s", bad[k][0], bad[k][1], out);
                        free(out);
                }
        }
        {
                char *argv[] = { (char *)ctl, NULL };

                cr_assert_eq(kvt_run(argv, &out), 2, "%s", out);
                free(out);
        }
        {
                char *argv[] = { (char *)ctl, "--help", NULL };

                cr_assert_eq(kvt_run(argv, &out), 0, "%s", out);
                cr_assert(strstr(out, "status") && strstr(out, "metrics") && strstr(out, "events"));
                free(out);
        }
        {
                char *argv[] = { (char *)ctl, "--version", NULL };

                cr_assert_eq(kvt_run(argv, &out), 0, "%s", out);
                cr_assert(strncmp(out, "kvpoolctl ", 10) == 0, "%s", out);
                free(out);
        }
}

/* The demo worker's bad command lines: the option or the number named,
 * exit 2, before it connects to anything. */
Test(integration, demo_worker_bad_usage, .timeout = 30)
{
        const char *demo = kvt_env_path("KVPOOL_DEMO_WORKER");
        const char *bad[][3] = {
                { "--pages", "0", "--pages: '0' is not a number in 1..65536" },
                { "--pages", "+5", "--pages: '+5' is not a number in 1..65536" },
                { "--hold-ms", " 7", "--hold-ms: ' 7' is not a number in 0..86400000" },
                { "--bogus", NULL, "unknown option '--bogus'" },
                { "--pool", NULL, "--pool needs a value" },
        };
        char *out = NULL;

        cr_assert_not_null(demo);
        for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
                char *argv[] = { (char *)demo, "write", (char *)bad[k][0], (char *)bad[k][1], NULL };

                cr_assert_eq(kvt_run(argv, &out), 2, "%s: %s", bad[k][0], out);
                cr_assert(strstr(out, bad[k][2]) != NULL, "%s: %s", bad[k][0], out);
                free(out);
        }
}

static void demo_roundtrip(const char *dtype)
{
        const char *demo = kvt_env_path("KVPOOL_DEMO_WORKER");
        const char *pools[] = { kvt_pool_spec(0, "demo", dtype, "4MiB"), NULL };
        struct kvt_proc w;
        char line[1024], *out = NULL;
        int holding = 0;

        cr_assert_not_null(demo);
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        char *wargv[] = { (char *)demo, "write", "--socket", D.url, "--pool", "demo", "--pages", "4",
                          "--tag", "42", NULL };
        char *rargv[] = { (char *)demo, "read", "--socket", D.url, "--pool", "demo", "--pages", "4",
                          "--tag", "42", NULL };
        char *bargv[] = { (char *)demo, "read", "--socket", D.url, "--pool", "demo", "--pages", "4",
                          "--tag", "43", NULL };

        cr_assert_eq(kvt_spawn(wargv, &w), 0);
        while (!holding && kvt_proc_line(&w, line, sizeof line) == 0)
                holding = strstr(line, "holding") != NULL;
        cr_assert(holding, "the writer did not get to hold its pages");
        /* While the writer holds them, and again after it exited. */
        cr_assert_eq(kvt_run(rargv, &out), 0, "reader failed:\n%s", out);
        cr_assert(strstr(out, "verified 4 pages") != NULL, "%s", out);
        free(out);
        cr_assert_eq(kvt_proc_wait(&w), 0, "writer failed");
        cr_assert_eq(kvt_run(rargv, &out), 0, "reader after the writer exited failed:\n%s", out);
        cr_assert(strstr(out, "verified 4 pages") != NULL, "%s", out);
        free(out);
        /* Another tag's keys are not cached. */
        cr_assert_eq(kvt_run(bargv, &out), 1, "%s", out);
        free(out);
}

Test(integration, demo_worker_fp8, .fini = cleanup, .timeout = 60)
{
        demo_roundtrip("fp8_e4m3");
}

Test(integration, demo_worker_fp4, .fini = cleanup, .timeout = 60)
{
        demo_roundtrip("fp4_e2m1");
}

/* `kvpoolctl events` whose output cannot be written stops with status 1 at
 * the first event instead of following the stream into the void forever,
 * and says why (its stderr comes back through the pipe: a kvpoolctl that
 * never connected exits 1 too, with another message). */
Test(integration, kvpoolctl_events_write_error_fails, .fini = cleanup, .timeout = 60)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        const char *pools[] = { kvt_pool_spec(0, "evpool", "bf16", "2MiB"), NULL };
        struct kvt_proc sub;
        kvc_client *c;
        kvc_pool *p;
        int st = 0, exited = 0;

        cr_assert_not_null(ctl);
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        char *argv[] = { "/bin/sh", "-c", "exec \"$0\" \"$@\" 2>&1 > /dev/full", (char *)ctl,
                         "--socket", D.url, "events", NULL };
        char line[512], said[512] = "";

        cr_assert_eq(kvt_spawn(argv, &sub), 0);
        cr_assert_eq(kvc_connect(D.url, "publisher", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "evpool", &p), 0);
        for (int i = 0; i < 200 && !exited; i++) {
                int32_t page, tok = i;
                kvc_key key;

                kvc_block_key(NULL, &tok, 1, "ev", 2, &key);
                cr_assert_eq(kvc_alloc(p, 1, &page), 0, "%s", kvc_errmsg(c));
                cr_assert_eq(kvc_publish(p, 1, &page, &key, NULL), 1, "%s", kvc_errmsg(c));
                cr_assert_eq(kvc_free(p, 1, &page), 0);
                usleep(25000);
                exited = waitpid(sub.pid, &st, WNOHANG) == sub.pid;
        }
        if (!exited) {
                kill(sub.pid, SIGKILL);
                waitpid(sub.pid, NULL, 0);
        }
        while (kvt_proc_line(&sub, line, sizeof(line)) == 0)
                if (!said[0] || strstr(line, "cannot write"))
                        snprintf(said, sizeof(said), "%s", line);
        sub.pid = -1;
        kvt_proc_wait(&sub);
        kvc_disconnect(c);
        cr_assert(exited, "kvpoolctl events kept running with its output going nowhere");
        cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1, "exit status 0x%x, want 1", st);
        cr_assert(strstr(said, "kvpoolctl: events: cannot write the output") != NULL, "said: \"%s\"", said);
}

/* `kvpoolctl events` finds the event socket beside the control socket by
 * default and prints what the daemon announces. */
Test(integration, kvpoolctl_events_on_the_default_url, .fini = cleanup, .timeout = 60)
{
        const char *ctl = kvt_env_path("KVPOOLCTL");
        const char *pools[] = { kvt_pool_spec(0, "evpool", "bf16", "2MiB"), NULL };
        struct kvt_proc sub;
        kvc_client *c;
        kvc_pool *p;
        char line[1024] = "";
        int rv, exited = 0;

        cr_assert_not_null(ctl);
        cr_assert_eq(kvt_daemon_start(&D, pools), 0);
        char *argv[] = { (char *)ctl, "--socket", D.url, "events", "--json", "--count", "1", NULL };

        cr_assert_eq(kvt_spawn(argv, &sub), 0);
        cr_assert_eq(kvc_connect(D.url, "publisher", NULL, &c), 0);
        cr_assert_eq(kvc_attach(c, "evpool", &p), 0);
        /* A SUB socket sees only what is sent after it connected: publish
         * fresh pages until the subscriber has its one event and exits. */
        for (int i = 0; i < 200 && !exited; i++) {
                int32_t page;
                kvc_key key;
                int32_t tok = i;

                kvc_block_key(NULL, &tok, 1, "ev", 2, &key);
                cr_assert_eq(kvc_alloc(p, 1, &page), 0, "%s", kvc_errmsg(c));
                rv = kvc_publish(p, 1, &page, &key, NULL);
                cr_assert_eq(rv, 1, "publish gave %d (%s)", rv, kvc_errmsg(c));
                cr_assert_eq(kvc_free(p, 1, &page), 0);
                usleep(25000);
                exited = waitpid(sub.pid, NULL, WNOHANG) == sub.pid;
        }
        cr_assert(exited, "kvpoolctl events --count 1 did not exit");
        sub.pid = -1;
        cr_assert_eq(kvt_proc_line(&sub, line, sizeof line), 0, "kvpoolctl events printed nothing");
        {
                cJSON *ev = cJSON_Parse(line);

                cr_assert_not_null(ev, "not JSON: %s", line);
                cr_assert_str_eq(cJSON_GetStringValue(cJSON_GetObjectItem(ev, "pool")), "evpool", "%s", line);
                cJSON_Delete(ev);
        }
        kvt_proc_wait(&sub);
        kvc_disconnect(c);
}
