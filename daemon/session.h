/* session.h - client sessions, one per nng pipe (connection).
 *
 * A session is created when its pipe appears (NNG_PIPE_EV_ADD_POST, or the
 * first message from it, whichever the serving loop sees first) and removed
 * when the pipe goes away; the server then drops every page reference the
 * session held.  The table maps nng pipe ids to sessions in O(1) so that
 * finding the session of a request costs no more than a hash probe.
 *
 * Not thread safe: the server calls it under its lock.
 */
#ifndef KVD_SESSION_H
#define KVD_SESSION_H

#include <stdint.h>
#include "kv_proto.h"

struct kvd_session {
        uint32_t id;          /* session id: the page table's sid, the hello reply's session_id */
        uint32_t pipe_id;     /* nng_pipe_id of the connection */
        int      hello;       /* HELLO received (must come first, and once) */
        char     name[KV_NAME_LEN];
        int64_t  pid;         /* peer pid from the socket (SO_PEERCRED), else from hello; -1 unknown */
        int64_t  uid;         /* peer uid from the socket, -1 unknown */
        uint8_t  salt[KV_KEY_LEN];
        int      tenant;      /* salt is not all zero */
        uint64_t attached;    /* bit i: pool i attached */
        int      pid_peer;    /* pid came from the socket's credentials, not from hello */
        /* reaper.c: the connection found to serve this session (fd and
         * inode; -1 none yet), the one the last sweep took for it (linked
         * when the next agrees), and since when it has been seen closed
         * (0: not) */
        int      conn_fd, cand_fd;
        uint64_t conn_ino, cand_ino;
        double   closed_since;
};

struct kvd_sessions;

int  kvd_sessions_new(struct kvd_sessions **ret);
/* Frees the table and every session in it (pages are not touched). */
void kvd_sessions_free(struct kvd_sessions *t);

/* The session of pipe_id, or NULL. */
struct kvd_session *kvd_sessions_find(struct kvd_sessions *t, uint32_t pipe_id);

/* Creates the session of pipe_id with a fresh session id (never 0, never
 * the id of a live session: ids wrap only after 2^32 - 2 connections, and
 * then skip the live ones), or returns the existing one.  Returns -ESTALE when
 * pipe_id was removed recently (a late message from a closed pipe must not
 * resurrect its session), -ENOMEM on allocation failure. */
int kvd_sessions_add(struct kvd_sessions *t, uint32_t pipe_id, struct kvd_session **ret);

/* Removes the session of pipe_id and returns it (caller frees it with
 * free()), or NULL when there is none.  Remembers pipe_id as removed. */
struct kvd_session *kvd_sessions_remove(struct kvd_sessions *t, uint32_t pipe_id);

uint32_t kvd_sessions_count(const struct kvd_sessions *t);

/* For tests: the id the next kvd_sessions_add tries first (0 and
 * UINT32_MAX are ignored; live ids are skipped from then on), so that the
 * wrap of the counter can be reached without 2^32 connections. */
void kvd_sessions_set_next_id(struct kvd_sessions *t, uint32_t id);

/* Iteration: *cursor starts at 0; returns the next session or NULL at the
 * end.  The table must not change during an iteration. */
const struct kvd_session *kvd_sessions_next(const struct kvd_sessions *t, uint32_t *cursor);

#endif
