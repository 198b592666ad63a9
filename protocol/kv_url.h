/* kv_url.h - the one check of kvpool's socket URLs, for kvpoold (--socket,
 * --events, the config file) and kvpoolctl (--socket, --events,
 * KVPOOL_SOCKET): both ends must agree on what a URL is, or a URL the tool
 * accepts fails only when it dials. */
#ifndef KV_URL_H
#define KV_URL_H

#include <stddef.h>

/* 0 when u has a scheme nng listens and dials on (ipc, abstract, inproc,
 * tcp[46], ws[s][46], tls+tcp[46]), an address after "://" that nng
 * parses and, for the TCP-based schemes, a numeric port in 0..65535 (0:
 * any); else -EINVAL with why saying what is wrong, the URL quoted in it
 * ("\"foo\": expected an nng URL such as ipc://PATH or tcp://HOST:PORT"). */
int kv_url_check(const char *u, char *why, size_t whylen);

#endif
