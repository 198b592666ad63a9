/* backend_cuda.c - pools in GPU memory (see backend.h).
 *
 * One cudaMalloc per pool on the pool's device, zeroed, exported with
 * cudaIpcGetMemHandle; the attach reply carries the 64-byte handle and the
 * device UUID, from which each client finds its own ordinal for the device
 * (CUDA_VISIBLE_DEVICES may differ between processes) and opens the handle
 * (client/client_cuda.c).  A legacy IPC handle is a bearer token: it goes
 * only to peers that passed the socket's permission check.
 *
 * Builds without CUDA get no cuda backend: kvd_backend_cuda is NULL and
 * kvd_cuda_mem_info says -ENODEV, which the pool code reports.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include "kv_config.h"
#include "backend.h"

#if !KV_HAVE_CUDA
const struct kvd_backend_ops *const kvd_backend_cuda = NULL;

int kvd_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total)
{
        return -ENODEV;
}
#else
#include <cuda_runtime.h>
#include "kv_cuda_common.cuh" /* kv_cuda_errno: the one CUDA error conversion */

/* Makes `device` current after checking it exists.  A missing driver, no
 * device at all, and an ordinal past the last device each get their own
 * message, since the operator fixes each differently. */
static int use_device(int device, char *err, size_t errlen)
{
        char what[96];
        int n = 0;
        cudaError_t e;

        e = cudaGetDeviceCount(&n);
        if (e != cudaSuccess) {
                snprintf(what, sizeof what, "no CUDA device %d: cudaGetDeviceCount failed (driver error)", device);
                (void)cudaGetLastError();
                kv_cuda_errno(e, what, err, errlen);
                return -ENODEV;
        }
        if (n == 0) {
                if (err && errlen)
                        snprintf(err, errlen, "no CUDA device %d: cudaGetDeviceCount says 0", device);
                return -ENODEV;
        }
        if (device < 0 || device >= n) {
                if (err && errlen)
                        snprintf(err, errlen, "no CUDA device %d: this process sees %d device%s (0..%d)", device, n,
                                 n == 1 ? "" : "s", n - 1);
                return -ENODEV;
        }
        e = cudaSetDevice(device);
        if (e != cudaSuccess) {
                snprintf(what, sizeof what, "CUDA device %d is not usable: cudaSetDevice", device);
                (void)cudaGetLastError();
                kv_cuda_errno(e, what, err, errlen);
                return -ENODEV;
        }
        return 0;
}

static int cuda_create(const char *pool_name, uint64_t bytes, int device, gid_t group, int has_group,
                       struct kvd_region *ret, char *err, size_t errlen)
{
        struct cudaDeviceProp prop;
        cudaIpcMemHandle_t h;
        void *base = NULL;
        const char *step;
        cudaError_t e;
        int r;

        (void)group;
        (void)has_group; /* device memory has no file mode: access is the socket's */
        r = use_device(device, err, errlen);
        if (r < 0)
                return r;
        /* the pool code rounds to 2 MiB already; round again so a direct
         * caller cannot make the IPC mapping's granularity differ */
        bytes = (bytes + (2ull << 20) - 1) & ~((2ull << 20) - 1);
        if (bytes == 0) {
                if (err && errlen)
                        snprintf(err, errlen, "pool %s: zero bytes requested", pool_name);
                return -EINVAL;
        }
        step = "cudaGetDeviceProperties";
        e = cudaGetDeviceProperties(&prop, device);
        if (e != cudaSuccess)
                goto fail;
        step = "cudaMalloc";
        e = cudaMalloc(&base, bytes);
        if (e != cudaSuccess)
                goto fail;
        /* zeroed, and finished, before any client can map it */
        step = "cudaMemset";
        e = cudaMemset(base, 0, bytes);
        if (e == cudaSuccess) {
                step = "cudaDeviceSynchronize";
                e = cudaDeviceSynchronize();
        }
        if (e != cudaSuccess)
                goto fail;
        step = "cudaIpcGetMemHandle";
        e = cudaIpcGetMemHandle(&h, base);
        if (e != cudaSuccess)
                goto fail;

        memset(ret, 0, sizeof *ret);
        ret->kind = KV_BACKEND_CUDA;
        ret->base = base;
        ret->bytes = bytes;
        ret->device = device;
        _Static_assert(sizeof h == sizeof ret->ipc_handle, "cudaIpcMemHandle_t is 64 bytes");
        memcpy(ret->ipc_handle, &h, sizeof ret->ipc_handle);
        memcpy(ret->device_uuid, &prop.uuid, sizeof ret->device_uuid);
        return 0;

fail: {
        char what[160];

        (void)cudaGetLastError();
        snprintf(what, sizeof what, "pool %s: %s of %llu bytes on CUDA device %d", pool_name, step,
                 (unsigned long long)bytes, device);
        r = kv_cuda_errno(e, what, err, errlen);
        if (base)
                cudaFree(base);
        return r;
}
}

static void cuda_describe(const struct kvd_region *r, struct kv_attach_rep *rep)
{
        rep->backend = KV_BACKEND_CUDA;
        memcpy(rep->ipc_handle, r->ipc_handle, sizeof rep->ipc_handle);
        memcpy(rep->device_uuid, r->device_uuid, sizeof rep->device_uuid);
        memset(rep->shm_name, 0, sizeof rep->shm_name);
}

static void cuda_destroy(struct kvd_region *r)
{
        if (!r || !r->base)
                return;
        /* The pool goes with the daemon.  Workers that still have the
         * handle open map freed memory from here on: CUDA calls freeing an
         * exported allocation before every importer closed it undefined
         * (cudaIpcOpenMemHandle), so their kernels must not touch it again;
         * libkvclient answers -ESTALE once the next daemon is up
         * (docs/operations.md section 4). */
        if (cudaSetDevice(r->device) == cudaSuccess)
                cudaFree(r->base);
        (void)cudaGetLastError();
        r->base = NULL;
        r->bytes = 0;
}

static const struct kvd_backend_ops cuda_ops = {
        .name = "cuda",
        .create = cuda_create,
        .describe = cuda_describe,
        .destroy = cuda_destroy,
};
const struct kvd_backend_ops *const kvd_backend_cuda = &cuda_ops;

/* Free and total memory of device.  Returns 0, or -ENODEV when the device
 * is absent or unusable (no driver, ordinal out of range). */
int kvd_cuda_mem_info(int device, uint64_t *ret_free, uint64_t *ret_total)
{
        size_t f = 0, t = 0;

        if (use_device(device, NULL, 0) < 0)
                return -ENODEV;
        if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
                (void)cudaGetLastError();
                return -ENODEV;
        }
        if (ret_free)
                *ret_free = f;
        if (ret_total)
                *ret_total = t;
        return 0;
}
#endif
