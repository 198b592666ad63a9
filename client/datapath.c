/* datapath.c - libkvclient's data path: kvc_write, kvc_gather, kvc_decode and
 * kvc_extend (with a caller's workspace: kvc_decode_ws, kvc_extend_ws, and
 * its size, kvc_decode_workspace, kvc_extend_workspace) dispatch to the CPU
 * reference (host pool) or the CUDA launchers (cuda pool) over the mapped
 * pool.
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

enum op {
        OP_WRITE, OP_GATHER, OP_DECODE, OP_EXTEND,
        OP_DECODE_WS_BYTES, OP_EXTEND_WS_BYTES, /* the size queries */
};

static const char *const op_names[] = {
        [OP_WRITE] = "kvc_write", [OP_GATHER] = "kvc_gather",
        [OP_DECODE] = "kvc_decode", [OP_EXTEND] = "kvc_extend",
        [OP_DECODE_WS_BYTES] = "kvc_decode_workspace", [OP_EXTEND_WS_BYTES] = "kvc_extend_workspace",
};

/* What the workspace calls add to their op: the caller's workspace (ptr
 * and bytes, NULL and 0 for the library's own scratch; named so that the
 * messages say kvc_decode_ws), or for a size query where the answer goes. */
struct ws_arg {
        const char *name;
        void       *ptr;
        size_t      bytes;
        size_t     *ret_bytes;
};

static void view_of(const struct kvc_pool *p, struct kv_pool_view *v)
{
        v->base = p->desc.base;
        v->layout = p->layout;
        v->k_scale = p->desc.k_scale;
        v->v_scale = p->desc.v_scale;
}

/* Runs op on the pool's backend; w: the workspace or size query of the
 * attention ops (NULL for the plain calls). */
static int dispatch(kvc_pool *p, enum op op, const void *args, const struct ws_arg *w, void *stream)
{
        static const struct ws_arg none = { NULL, NULL, 0, NULL };
        struct kv_pool_view v;
        char msg[MSG_LEN] = "";
        const char *name;
        size_t bytes = 0;
        int cuda, rv;

        if (p == NULL)
                return -EINVAL;
        if (!w)
                w = &none;
        name = w->name ? w->name : op_names[op];
        if (args == NULL)
                return kvc__fail(p->c, -EINVAL, "%s: args is NULL", name);
        if ((op == OP_DECODE_WS_BYTES || op == OP_EXTEND_WS_BYTES) && !w->ret_bytes)
                return kvc__fail(p->c, -EINVAL, "%s: ret_bytes is NULL", name);
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
                return kvc__fail(p->c, rv, "%s: %s", name, msg);
        switch (op) {
        case OP_WRITE:
                rv = cuda ? kv_cuda_write(&v, args, stream, msg, sizeof msg)
                          : kv_ref_write(&v, args, msg, sizeof msg);
                break;
        case OP_GATHER:
                rv = cuda ? kv_cuda_gather(&v, args, stream, msg, sizeof msg)
                          : kv_ref_gather(&v, args, msg, sizeof msg);
                break;
        /* A host pool ignores the workspace (the reference needs none) but
         * refuses the shape a CUDA pool refuses, so that code tried on a
         * host pool fails the same way on a GPU. */
        case OP_DECODE:
                if (cuda)
                        rv = kv_cuda_decode_ws(&v, args, w->ptr, w->bytes, stream, msg, sizeof msg);
                else if ((rv = kv_attn_ws_check(w->ptr, w->bytes, "decode", msg, sizeof msg)) == 0)
                        rv = kv_ref_decode(&v, args, msg, sizeof msg);
                break;
        case OP_EXTEND:
                if (cuda)
                        rv = kv_cuda_extend_ws(&v, args, w->ptr, w->bytes, stream, msg, sizeof msg);
                else if ((rv = kv_attn_ws_check(w->ptr, w->bytes, "extend", msg, sizeof msg)) == 0)
                        rv = kv_ref_extend(&v, args, msg, sizeof msg);
                break;
        case OP_DECODE_WS_BYTES:
                rv = cuda ? kv_cuda_decode_ws_bytes(&v, args, &bytes, msg, sizeof msg)
                          : kv_ref_decode_check(&v, args, msg, sizeof msg);
                break;
        case OP_EXTEND_WS_BYTES:
                rv = cuda ? kv_cuda_extend_ws_bytes(&v, args, &bytes, msg, sizeof msg)
                          : kv_ref_extend_check(&v, args, msg, sizeof msg);
                break;
        default:
                rv = -EINVAL;
                break;
        }
        if (rv != 0)
                return kvc__fail(p->c, rv, "%s on pool %s: %s", name, p->desc.name, msg[0] ? msg : "failed");
        if (w->ret_bytes)
                *w->ret_bytes = bytes;
        return 0;
}

/* Contracts of the calls are in kvclient.h. */
int kvc_write(kvc_pool *p, const struct kvc_write_args *a, void *stream)
{
        return dispatch(p, OP_WRITE, a, NULL, stream);
}

int kvc_gather(kvc_pool *p, const struct kvc_gather_args *a, void *stream)
{
        return dispatch(p, OP_GATHER, a, NULL, stream);
}

int kvc_decode(kvc_pool *p, const struct kvc_decode_args *a, void *stream)
{
        return dispatch(p, OP_DECODE, a, NULL, stream);
}

int kvc_extend(kvc_pool *p, const struct kvc_extend_args *a, void *stream)
{
        return dispatch(p, OP_EXTEND, a, NULL, stream);
}

/* The size queries have no stream: they answer for the call eagerly and
 * under capture alike (kv_cuda_decode_ws_bytes). */
int kvc_decode_workspace(kvc_pool *p, const struct kvc_decode_args *a, size_t *ret_bytes)
{
        const struct ws_arg w = { NULL, NULL, 0, ret_bytes };
        return dispatch(p, OP_DECODE_WS_BYTES, a, &w, NULL);
}

int kvc_extend_workspace(kvc_pool *p, const struct kvc_extend_args *a, size_t *ret_bytes)
{
        const struct ws_arg w = { NULL, NULL, 0, ret_bytes };
        return dispatch(p, OP_EXTEND_WS_BYTES, a, &w, NULL);
}

int kvc_decode_ws(kvc_pool *p, const struct kvc_decode_args *a, void *workspace, size_t workspace_bytes,
                  void *stream)
{
        const struct ws_arg w = { "kvc_decode_ws", workspace, workspace_bytes, NULL };
        return dispatch(p, OP_DECODE, a, &w, stream);
}

int kvc_extend_ws(kvc_pool *p, const struct kvc_extend_args *a, void *workspace, size_t workspace_bytes,
                  void *stream)
{
        const struct ws_arg w = { "kvc_extend_ws", workspace, workspace_bytes, NULL };
        return dispatch(p, OP_EXTEND, a, &w, stream);
}
