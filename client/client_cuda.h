/* client_cuda.h - libkvclient's CUDA mapping primitive (client_cuda.c).
 * Not installed.  kvclient.c keeps the process-wide registry (one mapping
 * per process and pool); these functions only open and close one. */
#ifndef KVC_CLIENT_CUDA_H
#define KVC_CLIENT_CUDA_H

#include <stddef.h>
#include <stdint.h>
#include "kv_proto.h"

/* "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" of a 16-byte device UUID, as
 * nvidia-smi -L prints it and CUDA_VISIBLE_DEVICES accepts it. */
void kvc__uuid_str(const uint8_t u[16], char out[48]);

/* Maps a cuda pool described by an attach reply: finds this process's CUDA
 * ordinal for rep->device_uuid (CUDA_VISIBLE_DEVICES may differ between
 * processes) and opens rep->ipc_handle on it with
 * cudaIpcMemLazyEnablePeerAccess.  The calling thread's current device is
 * restored afterwards.  On success *ret_base is the device pointer of the
 * pool's start and *ret_device the ordinal; release with kvc__cuda_unmap().
 * Errors (message in err): -ENODEV no device with that UUID in this process
 * (the UUID is named) or no usable CUDA at all, or a build without CUDA
 * ("built without CUDA"); -ESTALE the handle cannot be opened because its
 * memory is gone or out of reach (the daemon that exported it has exited or
 * restarted, or this process is in another pid namespace: the message says
 * both); another errno (kv_cuda_errno's) for any other failure to open it,
 * which a reconnect would meet again; -EINVAL rep is not a cuda pool.
 * Opening costs milliseconds: call it once per process and pool.
 * Thread-safe (the CUDA runtime serializes what it must). */
int kvc__cuda_map(const struct kv_attach_rep *rep, void **ret_base, int *ret_device, char *err, size_t errlen);

/* Closes a mapping made by kvc__cuda_map (cudaIpcCloseMemHandle on its
 * device).  Accepts base == NULL.  The caller synchronizes its streams
 * first: kernels still running on the mapping would fault. */
void kvc__cuda_unmap(void *base, int device);

/* 0 when the calling thread's current CUDA device is device (a pool's
 * ordinal in this process).  Otherwise -EINVAL with a message naming the
 * pool, both devices and what to do: the caller's buffers and stream belong
 * to its current device, and a kernel launched there on another device's
 * pool would fault (or, with peer access, run over the interconnect), so the
 * data path refuses rather than switch devices behind the caller's back.
 * -ENODEV when the current device cannot be read.  A thread-local read. */
int kvc__cuda_check_device(int device, const char *pool, char *err, size_t errlen);

#endif
