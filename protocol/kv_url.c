/* kv_url.c - the socket URL check kvpoold and kvpoolctl share (kv_url.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <nng/nng.h>

#include "kv_url.h"

int kv_url_check(const char *u, char *why, size_t whylen)
{
        static const char *const schemes[] = { "ipc", "abstract", "inproc", "tcp", "tcp4", "tcp6", "ws", "ws4",
                                               "ws6", "wss", "wss4", "wss6", "tls+tcp", "tls+tcp4", "tls+tcp6" };
        const char *sep = strstr(u, "://");
        nng_url *url = NULL;
        size_t n = sep ? (size_t)(sep - u) : 0;
        int known = 0, rv;

        for (unsigned i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++)
                known |= n == strlen(schemes[i]) && strncmp(u, schemes[i], n) == 0;
        if (!known) {
                snprintf(why, whylen, "\"%s\": expected an nng URL such as ipc://PATH or tcp://HOST:PORT", u);
                return -EINVAL;
        }
        if (sep[3] == '\0') {
                snprintf(why, whylen, "\"%s\": nothing after ://", u);
                return -EINVAL;
        }
        if ((rv = nng_url_parse(&url, u)) != 0) {
                snprintf(why, whylen, "\"%s\": %s", u, nng_strerror(rv));
                return -EINVAL;
        }
        /* a Unix socket address holds a path of at most 107 bytes; nng says
         * only "Address invalid" when it listens */
        if (strncmp(u, "ipc://", 6) == 0) {
                const size_t len = strlen(sep + 3), max = sizeof(((struct sockaddr_un *)0)->sun_path) - 1;

                if (len > max) {
                        snprintf(why, whylen, "\"%s\": the path is %zu bytes, more than the %zu a Unix socket "
                                 "address holds", u, len, max);
                        nng_url_free(url);
                        return -EINVAL;
                }
        }
        rv = 0;
        /* nng takes a service name or nothing as the port; kvpool wants the
         * number a user can see in the URL */
        if (strncmp(u, "tcp", 3) == 0 || strncmp(u, "ws", 2) == 0 || strncmp(u, "tls+tcp", 7) == 0) {
                const char *ps = url->u_port ? url->u_port : "";
                char *end;
                long port = strtol(ps, &end, 10);

                if (end == ps || *end || port < 0 || port > 65535) {
                        snprintf(why, whylen, "\"%s\": the port must be a number in 0..65535", u);
                        rv = -EINVAL;
                }
        }
        nng_url_free(url);
        return rv;
}
