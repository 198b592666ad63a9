/* safetensors.h - per-layer FP8 scales read from a safetensors checkpoint:
 * the "safetensors" source of scales.h.  Internal to the daemon core. */
#ifndef KVD_SAFETENSORS_H
#define KVD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

/* Reads the k and v scales of layers 0..num_layers-1 from path: a
 * .safetensors file, a sharded checkpoint's model.safetensors.index.json, or
 * a model folder (its index if it has one, else its model.safetensors).  A
 * layer's scales are the tensors model.layers.N.self_attn.{k,v}_scale or
 * model.layers.N.self_attn.{k,v}_proj.{k,v}_scale, F32/BF16/F16 scalars,
 * positive and finite; every layer needs exactly one of each.  Every
 * tensor's data_offsets, a scale's or not, must lie within the file's data
 * section, no byte in two tensors.  Fills
 * k[0..num_layers) and v[0..num_layers) and returns 0, or returns
 * -EINVAL/-ENOENT/-EIO/-ENOMEM with err naming the file, tensor or layer
 * (k and v may then be partly written). */
int kvd_safetensors_scales(const char *path, uint32_t num_layers, float *k, float *v, char *err,
                           size_t errlen);

#endif
