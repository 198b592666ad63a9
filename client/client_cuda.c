/* client_cuda.c - opening and closing a cuda pool's IPC handle in a worker
 * (see client_cuda.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "kv_config.h"
#include "client_cuda.h"

static int say(char *err, size_t errlen, int code, const char *fmt, const char *a)
{
        if (err && errlen)
                snprintf(err, errlen, fmt, a);
        return code;
}

/* Contract in client_cuda.h. */
void kvc__uuid_str(const uint8_t u[16], char out[48])
{
        static const int dash[] = { 4, 6, 8, 10 };
        char *p = out;
        int d = 0;

        p += sprintf(p, "GPU-");
        for (int i = 0; i < 16; i++) {
                if (d < 4 && i == dash[d]) {
                        *p++ = '-';
                        d++;
                }
                p += sprintf(p, "%02x", u[i]);
        }
        *p = 0;
}

#if !KV_HAVE_CUDA
int kvc__cuda_map(const struct kv_attach_rep *rep, void **ret_base, int *ret_device, char *err, size_t errlen)
{
        (void)rep;
        (void)ret_base;
        (void)ret_device;
        return say(err, errlen, -ENODEV, "%s", "cuda pool: libkvclient was built without CUDA");
}

void kvc__cuda_unmap(void *base, int device)
{
        (void)base;
        (void)device;
}

int kvc__cuda_check_device(int device, const char *pool, char *err, size_t errlen)
{
        (void)device;
        return say(err, errlen, -ENODEV, "cuda pool %s: libkvclient was built without CUDA", pool);
}
#else
#include <cuda_runtime.h>
#include "kv_cuda_common.cuh" /* kv_cuda_errno */


/* This process's ordinal of the device with UUID u, or a negative errno. */
static int find_device(const uint8_t u[16], char *err, size_t errlen)
{
        char us[48], what[160];
        cudaError_t e;
        int n = 0;

        kvc__uuid_str(u, us);
        e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) {
                (void)cudaGetLastError();
                snprintf(what, sizeof what, "cuda pool on %s: cudaGetDeviceCount", us);
                kv_cuda_errno(e, what, err, errlen);
                return -ENODEV;
        }
        for (int i = 0; i < n; i++) {
                cudaUUID_t id;
                struct cudaDeviceProp prop;

                if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
                        (void)cudaGetLastError();
                        continue;
                }
                id = prop.uuid;
                if (memcmp(&id, u, 16) == 0)
                        return i;
        }
        if (err && errlen) {
                const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
                snprintf(err, errlen,
                         "cuda pool on %s: no device with that UUID is visible in this process "
                         "(%d device%s visible, CUDA_VISIBLE_DEVICES=%s)",
                         us, n, n == 1 ? "" : "s", cvd ? cvd : "(unset)");
        }
        return -ENODEV;
}

int kvc__cuda_map(const struct kv_attach_rep *rep, void **ret_base, int *ret_device, char *err, size_t errlen)
{
        cudaIpcMemHandle_t h;
        void *base = NULL;
        int dev, prev = -1;
        cudaError_t e;

        if (!rep || rep->backend != KV_BACKEND_CUDA)
                return say(err, errlen, -EINVAL, "%s", "cuda map: the attach reply is not a cuda pool");
        dev = find_device(rep->device_uuid, err, errlen);
        if (dev < 0)
                return dev;
        /* open on the pool's device without changing the caller's current
         * device for good */
        if (cudaGetDevice(&prev) != cudaSuccess)
                prev = -1;
        e = cudaSetDevice(dev);
        if (e != cudaSuccess) {
                (void)cudaGetLastError();
                kv_cuda_errno(e, "cuda map: cudaSetDevice", err, errlen);
                return -ENODEV;
        }
        memcpy(&h, rep->ipc_handle, sizeof h);
        e = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
        if (prev >= 0 && prev != dev)
                cudaSetDevice(prev);
        if (e != cudaSuccess) {
                /* A handle whose memory is gone (its kvpoold exited or
                 * restarted since it answered: an old handle opened on the
                 * H200 gives an invalid resource handle) is a stale pool,
                 * -ESTALE: reconnect and attach again.  A process that
                 * cannot reach the daemon's (CUDA IPC checks that both live
                 * in one pid namespace: a worker in a container of its own)
                 * gets the same errors, so the message names both causes.
                 * Any other error is not a stale pool, and a reconnect would
                 * meet it again: kv_cuda_errno's errno. */
                const int stale = e == cudaErrorInvalidResourceHandle || e == cudaErrorMapBufferObjectFailed;
                const int rc = stale ? -ESTALE : kv_cuda_errno(e, NULL, NULL, 0);

                (void)cudaGetLastError();
                if (err && errlen)
                        snprintf(err, errlen, "cuda pool: cannot open its CUDA IPC handle on device %d: %s: %s%s",
                                 dev, cudaGetErrorName(e), cudaGetErrorString(e),
                                 stale ? " (the memory behind it is gone: kvpoold exited or restarted since the "
                                         "attach, reconnect and re-attach; or this process cannot reach kvpoold's "
                                         "CUDA memory: the two must share a pid namespace, a container needs "
                                         "--pid=host)"
                                       : "");
                return rc;
        }
        *ret_base = base;
        *ret_device = dev;
        return 0;
}

void kvc__cuda_unmap(void *base, int device)
{
        int prev = -1;

        if (!base)
                return;
        if (cudaGetDevice(&prev) != cudaSuccess)
                prev = -1;
        if (cudaSetDevice(device) == cudaSuccess)
                cudaIpcCloseMemHandle(base);
        if (prev >= 0 && prev != device)
                cudaSetDevice(prev);
        (void)cudaGetLastError();
}

int kvc__cuda_check_device(int device, const char *pool, char *err, size_t errlen)
{
        int cur = -1;
        cudaError_t e = cudaGetDevice(&cur);

        if (e != cudaSuccess) {
                (void)cudaGetLastError();
                kv_cuda_errno(e, "cudaGetDevice", err, errlen);
                return -ENODEV;
        }
        if (cur == device)
                return 0;
        if (err && errlen)
                snprintf(err, errlen,
                         "pool %s is on CUDA device %d of this process but the calling thread's current device is "
                         "%d: call cudaSetDevice(%d) first, with buffers and a stream of that device",
                         pool, device, cur, device);
        return -EINVAL;
}
#endif
