/* datapath.c - libkvclient's data path: kvc_write, kvc_gather, kvc_decode and
 * kvc_extend dispatch to the CPU reference (host pool) or the CUDA launchers
 * (cuda pool) over the mapped pool.
 *
 * Thin on purpose: the kernels' launchers check every argument and name the
 * bad one; this file only builds the kv_pool_view and turns the launcher's
 * message into the client's error message.  No lock is taken: everything
 * read here was fixed by kvc_attach().
 */
#include <errno.h>
#include <stddef.h>

#include "client_cuda.h"
#include "kv_ops.h"
#include "kvclient_internal.h"

#define MSG_LEN 256

enum op { OP_WRITE, OP_GATHER, OP_DECODE, OP_EXTEND };

static const char *const op_names[] = {
        [OP_WRITE] = "kvc_write", [OP_GATHER] = "kvc_gather",
        [OP_DECODE] = "kvc_decode", [OP_EXTEND] = "kvc_extend",
};

static void view_of(const struct kvc_pool *p, struct kv_pool_view *v)
{
        v->base = p->desc.base;
        v->layout = p->layout;
        v->k_scale = p->desc.k_scale;
        v->v_scale = p->desc.v_scale;
}

static int dispatch(kvc_pool *p, enum op op, const void *args, void *stream)
{
        struct kv_pool_view v;
        char msg[MSG_LEN] = "";
        int cuda, rv;

        if (p == NULL)
                return -EINVAL;
        if (args == NULL)
                return kvc__fail(p->c, -EINVAL, "%s: args is NULL", op_names[op]);
        /* After a daemon restart a cuda mapping may point at freed device
         * memory: refuse rather than corrupt. */
        if (kvc__is_stale(p->c))
                return kvc__fail(p->c, -ESTALE, "%s", kvc__stale_msg);
        view_of(p, &v);
        cuda = p->desc.backend == KVC_BACKEND_CUDA;
        /* With pools on several GPUs (one per tensor-parallel rank) a
         * process can hold pools of two devices: the launch must happen on
         * the pool's device, which is the caller's to choose. */
        if (cuda && (rv = kvc__cuda_check_device(p->desc.device, p->desc.name, msg, sizeof msg)) != 0)
                return kvc__fail(p->c, rv, "%s: %s", op_names[op], msg);
        switch (op) {
        case OP_WRITE:
                rv = cuda ? kv_cuda_write(&v, args, stream, msg, sizeof msg)
                          : kv_ref_write(&v, args, msg, sizeof msg);
                break;
        case OP_GATHER:
                rv = cuda ? kv_cuda_gather(&v, args, stream, msg, sizeof msg)
                          : kv_ref_gather(&v, args, msg, sizeof msg);
                break;
        case OP_DECODE:
                rv = cuda ? kv_cuda_decode(&v, args, stream, msg, sizeof msg)
                          : kv_ref_decode(&v, args, msg, sizeof msg);
                break;
        case OP_EXTEND:
                rv = cuda ? kv_cuda_extend(&v, args, stream, msg, sizeof msg)
                          : kv_ref_extend(&v, args, msg, sizeof msg);
                break;
        default:
                rv = -EINVAL;
                break;
        }
        if (rv != 0)
                return kvc__fail(p->c, rv, "%s on pool %s: %s", op_names[op], p->desc.name,
                                 msg[0] ? msg : "failed");
        return 0;
}

/* Contracts of the four calls are in kvclient.h. */
int kvc_write(kvc_pool *p, const struct kvc_write_args *a, void *stream)
{
        return dispatch(p, OP_WRITE, a, stream);
}

int kvc_gather(kvc_pool *p, const struct kvc_gather_args *a, void *stream)
{
        return dispatch(p, OP_GATHER, a, stream);
}

int kvc_decode(kvc_pool *p, const struct kvc_decode_args *a, void *stream)
{
        return dispatch(p, OP_DECODE, a, stream);
}

int kvc_extend(kvc_pool *p, const struct kvc_extend_args *a, void *stream)
{
        return dispatch(p, OP_EXTEND, a, stream);
}
