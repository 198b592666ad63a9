/* kv_cuda_common.cu - CUDA error conversion, the argument checks of the
 * write and gather launchers (kv_write_check / kv_gather_check, shared with
 * the CPU reference, plus what only the kernels need of the pool), where
 * the data-path pointers live (kv_cuda_check_mem), and kv_cuda_available(). */
#include <atomic>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <cuda_runtime.h>

#include "kv_cuda_common.cuh"
#include "kv_ref_common.h"

extern "C" int kv_cuda_errno(int cuda_err, const char *what, char *msg, size_t msglen)
{
        cudaError_t e = (cudaError_t)cuda_err;
        int err;

        if (e == cudaSuccess)
                return 0;
        switch (e) {
        case cudaErrorMemoryAllocation:
                err = -ENOMEM;
                break;
        case cudaErrorInvalidValue:
        case cudaErrorInvalidConfiguration:
        case cudaErrorInvalidDevicePointer:
        case cudaErrorInvalidPitchValue:
        /* A handle the caller passed that CUDA cannot use here: on the data
         * path, a stream of another device than the current one, which the
         * launch refuses before anything runs (CUDA programming guide,
         * "Stream and Event Behavior").  A stream of a second context of
         * the same device is not refused: a gather on one ran and returned
         * 0 on the H200 (2026-12-01).  A bad argument, not a stale pool (-ESTALE tells a worker to
         * reconnect and attach again, kvclient.h); the one place where a
         * CUDA error does mean a stale pool, opening its IPC handle, returns
         * -ESTALE itself (client_cuda.c). */
        case cudaErrorInvalidResourceHandle:
                err = -EINVAL;
                break;
        case cudaErrorNoDevice:
        case cudaErrorInsufficientDriver:
        case cudaErrorInvalidDevice:
        case cudaErrorDevicesUnavailable:
        case cudaErrorCompatNotSupportedOnDevice:
                err = -ENODEV;
                break;
        case cudaErrorMapBufferObjectFailed:
                err = -ESTALE;
                break;
        default:
                err = -EIO;
                break;
        }
        return kv_fail(err, msg, msglen, "%s: %s: %s%s", what ? what : "CUDA", cudaGetErrorName(e),
                       cudaGetErrorString(e),
                       e == cudaErrorInvalidResourceHandle
                               ? " (a stream of another device than the current one, or destroyed?)"
                               : "");
}

extern "C" int kv_cuda_available(void)
{
        int n = 0;

        /* cudaGetDeviceCount fails (rather than returning 0) when no driver is
         * loaded; both mean "no usable device". */
        if (cudaGetDeviceCount(&n) != cudaSuccess) {
                (void)cudaGetLastError(); /* clear the sticky-free error state */
                return 0;
        }
        return n > 0;
}

extern "C" int kv_cuda_check_aligned(const struct kv_pool_view *p, uint32_t layer, const char *op, char *msg,
                                     size_t msglen)
{
        const struct kv_layout *L = &p->layout;
        const uintptr_t b = (uintptr_t)p->base;
        uintptr_t a = (b + kv_layout_k(L, layer)) | (b + kv_layout_v(L, layer));

        if (L->g.dtype == KVC_DTYPE_FP4_E2M1)
                a |= (b + kv_layout_ks(L, layer)) | (b + kv_layout_vs(L, layer));
        if (L->token_bytes % 16 || a % 16)
                return kv_fail(-EINVAL, msg, msglen, "%s: the pool's layer %u arrays or token rows are not 16-byte aligned",
                               op, layer);
        return 0;
}

/* What the write and gather kernels need of a pool that kv_write_check /
 * kv_gather_check accepted (so the view and the layer are valid): a head_dim
 * they are built for, and the layer's arrays 16-byte aligned
 * (kv_cuda_check_aligned).  Checked also when there is no work
 * (num_tokens or n_pages 0), so that a pool the kernels cannot take fails
 * on the first call, empty or not. */
static int check_pool(const struct kv_pool_view *p, uint32_t layer, char *msg, size_t msglen)
{
        if (!kv_cuda_head_dim_ok(p->layout.g.head_dim))
                return kv_fail(-EINVAL, msg, msglen,
                               "pool: head_dim %u is not supported by the CUDA kernels (64, 128 or 256)",
                               p->layout.g.head_dim);
        return kv_cuda_check_aligned(p, layer, "pool", msg, msglen);
}

extern "C" int kv_cuda_check_write(const struct kv_pool_view *p, const struct kvc_write_args *a,
                                   char *msg, size_t msglen)
{
        int r = kv_write_check(p, a, msg, msglen);

        if (r < 0 || (r = check_pool(p, a->layer, msg, msglen)) < 0 || a->num_tokens == 0)
                return r;
        const struct kv_mem_arg mem[] = {
                { a->k, "k", KV_MEM_GPU }, { a->v, "v", KV_MEM_GPU }, { a->slots, "slots", KV_MEM_GPU },
        };
        return kv_cuda_check_mem(mem, sizeof mem / sizeof mem[0], NULL, msg, msglen);
}

extern "C" int kv_cuda_check_gather(const struct kv_pool_view *p, const struct kvc_gather_args *a,
                                    char *msg, size_t msglen)
{
        int r = kv_gather_check(p, a, msg, msglen);

        if (r < 0 || (r = check_pool(p, a->layer, msg, msglen)) < 0 || a->n_pages == 0)
                return r;
        const struct kv_mem_arg mem[] = {
                { a->pages, "pages", KV_MEM_GPU }, { a->k_out, "k_out", KV_MEM_GPU },
                { a->v_out, "v_out", KV_MEM_GPU },
        };
        return kv_cuda_check_mem(mem, sizeof mem / sizeof mem[0], NULL, msg, msglen);
}

/* Whether device dev reads pageable host memory (HMM or ATS): then plain
 * malloc'ed memory is fine for KV_MEM_GPU.  Asked once per device; a
 * failed query is no for this call only, not remembered. */
static bool pageable_ok(int dev)
{
        static std::atomic<int> known[64]; /* 0 not asked, 1 no, 2 yes */
        if (dev < 0 || dev >= 64)
                return false;
        int k = known[dev].load(std::memory_order_relaxed);
        if (k == 0) {
                int v = 0;
                const kvk::relaxed_capture relaxed;
                if (cudaDeviceGetAttribute(&v, cudaDevAttrPageableMemoryAccess, dev) != cudaSuccess) {
                        (void)cudaGetLastError();
                        return false;
                }
                k = v ? 2 : 1;
                known[dev].store(k, std::memory_order_relaxed);
        }
        return k == 2;
}

static const char *mem_name(cudaMemoryType t)
{
        switch (t) {
        case cudaMemoryTypeDevice:
                return "device";
        case cudaMemoryTypeManaged:
                return "managed";
        case cudaMemoryTypeHost:
                return "pinned host";
        default:
                return "host";
        }
}

extern "C" int kv_cuda_check_mem(const struct kv_mem_arg *args, size_t n, const char *op, char *msg, size_t msglen)
{
        const char *sep = op ? ": " : "";
        int dev = -1;

        if (!op)
                op = "";
        for (size_t i = 0; i < n; i++) {
                const struct kv_mem_arg *m = &args[i];
                if (!m->ptr)
                        continue;
                if (dev < 0 && cudaGetDevice(&dev) != cudaSuccess) {
                        (void)cudaGetLastError();
                        return kv_fail(-ENODEV, msg, msglen, "%s%sno current CUDA device", op, sep);
                }
                cudaPointerAttributes a;
                cudaError_t e;
                memset(&a, 0, sizeof a);
                {
                        const kvk::relaxed_capture relaxed;
                        e = cudaPointerGetAttributes(&a, m->ptr);
                }
                if (e != cudaSuccess) {
                        /* runtimes before 11 failed for memory CUDA does not
                         * know; now that is type Unregistered */
                        (void)cudaGetLastError();
                        a.type = cudaMemoryTypeUnregistered;
                }
                const bool on_dev = a.type == cudaMemoryTypeDevice;
                switch (m->want) {
                case KV_MEM_HOST:
                        if (on_dev)
                                return kv_fail(-EINVAL, msg, msglen,
                                               "%s%s%s %p is device memory (CUDA device %d): it is the host copy, "
                                               "read on the CPU before the launch",
                                               op, sep, m->name, m->ptr, a.device);
                        break;
                case KV_MEM_GPU:
                        /* pinned host memory is mapped into the device's
                         * address space under unified addressing, at its
                         * host address only where the device can use host
                         * pointers of registered memory
                         * (cudaDevAttrCanUseHostPointerForRegisteredMem):
                         * elsewhere cudaHostRegister'ed memory has another
                         * device address, and the kernel would read ptr */
                        if ((a.type == cudaMemoryTypeHost && a.devicePointer == m->ptr) ||
                            a.type == cudaMemoryTypeManaged)
                                break;
                        if (a.type != cudaMemoryTypeDevice && a.type != cudaMemoryTypeHost && pageable_ok(dev))
                                break;
                        /* else as a workspace: device memory, and of which device */
                        [[fallthrough]];
                case KV_MEM_DEVICE:
                        if (a.type == cudaMemoryTypeManaged)
                                break;
                        if (!on_dev)
                                return kv_fail(-EINVAL, msg, msglen, "%s%s%s %p is %s memory, not device memory "
                                               "of CUDA device %d", op, sep, m->name, m->ptr, mem_name(a.type), dev);
                        if (a.device != dev)
                                return kv_fail(-EINVAL, msg, msglen,
                                               "%s%s%s %p is memory of CUDA device %d, the pool's is %d", op,
                                               sep, m->name, m->ptr, a.device, dev);
                        break;
                }
        }
        return 0;
}
