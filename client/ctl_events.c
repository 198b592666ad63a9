/* ctl_events.c - `kvpoolctl events`: subscribe to kvpoold's event stream and
 * print one line per event, readable or JSON, reporting gaps in the sequence
 * numbers.  The event wire format and its decoder live in daemon/events.c,
 * which kvpoolctl links on its own (it depends on nng and libc only). */
#include "ctl_events.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nng/nng.h>
#include <nng/protocol/pubsub0/sub.h>

#include "../daemon/events.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
        (void)sig;
        stop_requested = 1;
}

static int usage(const char *fmt, const char *arg)
{
        fprintf(stderr, "kvpoolctl: events: ");
        fprintf(stderr, fmt, arg);
        fprintf(stderr, "\nusage: kvpoolctl [--events URL] events [--json] [--count N]\n");
        return 2;
}

/* Parses a count: 1 .. 2^62, decimal. */
static int parse_count(const char *s, uint64_t *ret)
{
        char *end;
        errno = 0;
        unsigned long long v = strtoull(s, &end, 10);
        /* digits only: strtoull would also take leading blanks and a sign */
        if (errno || !isdigit((unsigned char)s[0]) || *end || v == 0 || v > (1ull << 62))
                return -EINVAL;
        *ret = v;
        return 0;
}

static void iso_time(uint64_t ns, char *buf, size_t len)
{
        time_t sec = (time_t)(ns / 1000000000ull);
        struct tm tm;
        gmtime_r(&sec, &tm);
        size_t n = strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm);
        snprintf(buf + n, len - n, ".%06uZ", (unsigned)(ns % 1000000000ull / 1000));
}

static void hex(const uint8_t *p, size_t n, char *out)
{
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[p[i] >> 4];
                out[2 * i + 1] = digits[p[i] & 15];
        }
        out[2 * n] = '\0';
}

/* Writes s as a JSON string (pool names come from the daemon's config). */
static void json_str(FILE *f, const char *s)
{
        fputc('"', f);
        for (; *s; s++) {
                unsigned char c = (unsigned char)*s;
                if (c == '"' || c == '\\')
                        fprintf(f, "\\%c", c);
                else if (c < 0x20)
                        fprintf(f, "\\u%04x", c);
                else
                        fputc(c, f);
        }
        fputc('"', f);
}

static void print_gap(int json, uint64_t last, uint64_t seq)
{
        uint64_t missed = seq - last - 1;
        if (json)
                printf("{\"type\":\"missed\",\"missed\":%" PRIu64 ",\"first_seq\":%" PRIu64
                       ",\"last_seq\":%" PRIu64 "}\n", missed, last + 1, seq - 1);
        else
                printf("missed %" PRIu64 " event%s (seq %" PRIu64 "..%" PRIu64 ")\n", missed,
                       missed == 1 ? "" : "s", last + 1, seq - 1);
}

static void print_restart(int json, uint64_t last, uint64_t seq)
{
        if (json)
                printf("{\"type\":\"restarted\",\"last_seq\":%" PRIu64 ",\"seq\":%" PRIu64 "}\n",
                       last, seq);
        else
                printf("sequence went back from %" PRIu64 " to %" PRIu64
                       " (the daemon restarted?)\n", last, seq);
}

static void print_event(int json, const struct kvd_event *ev)
{
        char when[48], key[33];
        const char *name = kvd_event_type_name(ev->type);
        iso_time(ev->time_ns, when, sizeof(when));
        hex(ev->key, sizeof(ev->key), key);
        if (json) {
                printf("{\"seq\":%" PRIu64 ",\"time\":\"%s\",\"time_ns\":\"%" PRIu64 "\",\"type\":",
                       ev->seq, when, ev->time_ns);
                if (name)
                        printf("\"%s\"", name);
                else
                        printf("%u", ev->type);
                printf(",\"pool\":");
                json_str(stdout, ev->pool);
                if (ev->type == KVD_EV_STORED || ev->type == KVD_EV_EVICTED)
                        printf(",\"page\":%u,\"key\":\"%s\"", ev->page, key);
                else if (ev->type == KVD_EV_PRESSURE)
                        printf(",\"free_fraction\":%.17g,\"threshold\":%.17g,\"entering\":%s",
                               ev->free_fraction, ev->threshold, ev->entering ? "true" : "false");
                else if (ev->type == KVD_EV_RESET)
                        printf(",\"keys\":%u", ev->keys);
                printf("}\n");
                return;
        }
        printf("#%" PRIu64 " %s ", ev->seq, when);
        switch (ev->type) {
        case KVD_EV_STORED:
        case KVD_EV_EVICTED:
                printf("%-8s pool=%s page=%u key=%s\n", name, ev->pool, ev->page, key);
                break;
        case KVD_EV_PRESSURE:
                printf("%-8s pool=%s free=%.4f threshold=%.4f %s\n", name, ev->pool,
                       ev->free_fraction, ev->threshold,
                       ev->entering ? "entering (fell below)" : "leaving (rose above)");
                break;
        case KVD_EV_RESET:
                /* not "every key": a tenant's RESET drops only its tenant's
                 * keys, and the event does not say which it was */
                printf("%-8s pool=%s keys=%u (prefix keys dropped)\n", name, ev->pool, ev->keys);
                break;
        case KVD_EV_SHUTDOWN:
                printf("shutdown\n");
                break;
        default:
                printf("type %u pool=%s (unknown to this kvpoolctl)\n", ev->type, ev->pool);
                break;
        }
}

int ctl_events_main(const char *events_url, int json, int argc, char **argv)
{
        uint64_t count = 0;
        for (int i = 1; i < argc; i++) {
                if (strcmp(argv[i], "--json") == 0) {
                        json = 1;
                } else if (strcmp(argv[i], "--count") == 0) {
                        if (i + 1 >= argc)
                                return usage("--count needs a number", "");
                        if (parse_count(argv[++i], &count) < 0)
                                return usage("--count: '%s' is not a positive number", argv[i]);
                } else if (strncmp(argv[i], "--count=", 8) == 0) {
                        if (parse_count(argv[i] + 8, &count) < 0)
                                return usage("--count: '%s' is not a positive number", argv[i] + 8);
                } else {
                        return usage("unknown option '%s'", argv[i]);
                }
        }
        if (!events_url || !*events_url)
                return usage("no event socket URL%s", "");

        nng_socket sock;
        int rv = nng_sub0_open(&sock);
        if (rv == 0)
                rv = nng_socket_set(sock, NNG_OPT_SUB_SUBSCRIBE, "", 0);
        /* absorb bursts (thousands of evictions from one alloc) */
        if (rv == 0)
                rv = nng_socket_set_int(sock, NNG_OPT_RECVBUF, 8192);
        /* wake up now and then to notice SIGINT */
        if (rv == 0)
                rv = nng_socket_set_ms(sock, NNG_OPT_RECVTIMEO, 200);
        if (rv != 0) {
                fprintf(stderr, "kvpoolctl: events: cannot open a subscriber socket: %s\n",
                        nng_strerror(rv));
                return 1;
        }
        /* SIGINT/SIGTERM end the stream with status 0; the handler goes in
         * before the dial, since the daemon (or a test) sees the
         * subscription as soon as the connection is up and may signal at
         * once */
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, NULL);
        sigaction(SIGTERM, &sa, NULL);
        /* a synchronous dial: no daemon there is an error, not a silent wait
         * (once connected, nng redials by itself if the daemon restarts) */
        rv = nng_dial(sock, events_url, NULL, 0);
        if (rv != 0) {
                fprintf(stderr, "kvpoolctl: events: cannot connect to %s: %s (is kvpoold running"
                        " with its event stream there?)\n", events_url, nng_strerror(rv));
                nng_close(sock);
                return 1;
        }

        setvbuf(stdout, NULL, _IOLBF, 0);

        uint64_t last = 0, printed = 0;
        int status = 0;
        while (!stop_requested) {
                void *buf = NULL;
                size_t len = 0;
                rv = nng_recv(sock, &buf, &len, NNG_FLAG_ALLOC);
                if (rv == NNG_ETIMEDOUT || rv == NNG_EINTR)
                        continue;
                if (rv != 0) {
                        fprintf(stderr, "kvpoolctl: events: receive failed: %s\n", nng_strerror(rv));
                        status = 1;
                        break;
                }
                struct kvd_event ev;
                int r = kvd_event_decode(buf, len, &ev);
                nng_free(buf, len);
                if (r < 0) {
                        fprintf(stderr, "kvpoolctl: events: skipped an undecodable message of %zu bytes"
                                " (%s)\n", len, strerror(-r));
                        continue;
                }
                /* gaps: nng's PUB drops messages for a slow subscriber */
                if (last != 0 && ev.seq > last + 1)
                        print_gap(json, last, ev.seq);
                else if (last != 0 && ev.seq <= last)
                        print_restart(json, last, ev.seq);
                last = ev.seq;
                print_event(json, &ev);
                /* output nobody can read (a full disk) ends the command with
                 * a failure, rather than following the stream forever */
                if (ctl_output_done("kvpoolctl: events") != 0) {
                        status = 1;
                        break;
                }
                if (ev.type == KVD_EV_SHUTDOWN || (count && ++printed >= count))
                        break;
        }
        /* The socket is left for the process exit to release: Debian's nng
         * 1.5.2 can block forever in nng_close while an event is arriving
         * (its ipc transport drops a read it resubmits on the closing
         * connection, and the pipe reaper waits for it; about one `events
         * --count` in 100 never exited), and kvpoolctl exits right after
         * this returns. */
        return status;
}
