/* backend.h - where a pool's memory lives.  A backend creates the single
 * allocation of a pool, describes how a client maps it (the part of the
 * attach reply that is backend specific), and destroys it.
 *
 *   host: POSIX shared memory (shm_open + ftruncate + mmap), mode 0600, or
 *         0660 with a configured group; name /kvpool.<pid>.<pool>, locked
 *         (flock) while the pool lives; kvd_host_sweep removes those of dead
 *         daemons.
 *   cuda: one cudaMalloc on the pool's device, zeroed, exported with
 *         cudaIpcGetMemHandle; the attach reply carries the handle and the
 *         device UUID.  Only in builds with CUDA.
 */
#ifndef KVD_BACKEND_H
#define KVD_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include "kv_proto.h"

struct kvd_region {
        int       kind;           /* enum kv_backend_kind */
        void     *base;           /* daemon-side address (host) or device pointer (cuda) */
        uint64_t  bytes;
        int       device;         /* cuda ordinal, -1 for host */
        char      shm_name[KV_SHM_NAME_LEN];
        /* host: the object, kept open with an flock(LOCK_EX) on it for the
         * pool's life, so that a later kvpoold can tell it from a dead
         * daemon's (backend_host.c); valid while shm_name[0] is set. */
        int       shm_fd;
        uint8_t   ipc_handle[64];
        uint8_t   device_uuid[16];
};

struct kvd_backend_ops {
        const char *name;
        /* Creates a zeroed region of bytes (already 2 MiB rounded). */
        int  (*create)(const char *pool_name, uint64_t bytes, int device, gid_t group, int has_group,
                       struct kvd_region *ret, char *err, size_t errlen);
        /* Fills the backend-specific fields of an attach reply. */
        void (*describe)(const struct kvd_region *r, struct kv_attach_rep *rep);
        /* Releases the region (unlinks the shm name). Accepts a zeroed region. */
        void (*destroy)(struct kvd_region *r);
};

extern const struct kvd_backend_ops kvd_backend_host;

/* Where shm_open keeps its objects (glibc, Linux). */
#define KVD_SHM_DIR "/dev/shm"

/* Removes from dir (KVD_SHM_DIR; a test passes its own) the host pools of
 * kvpoolds that are gone: every regular file named kvpool.<digits>.<pool>
 * that is not empty and whose flock nobody holds, whatever its pid.  Leaves
 * alone a locked object (a live kvpoold's, maybe in another pid namespace),
 * an empty one (maybe a starting kvpoold's), any other name, anything but a
 * regular file, and what it cannot open or remove.  Logs one info line per
 * object removed, with its size, and a warning naming each object it could
 * not open, lock or remove.  Returns the number removed, or a negative errno
 * (logged) when dir cannot be read; what it removed before a read error
 * stays removed.  Thread safe (no state of its own); objects of this
 * process's pools are locked, so never removed. */
int kvd_host_sweep(const char *dir);
/* NULL in builds without CUDA. */
extern const struct kvd_backend_ops *const kvd_backend_cuda;

/* Device memory free on device, for "capacity": "0.9" style fractions.
 * Returns 0 or -ENODEV. */
int kvd_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total);

#endif
