"""FP8 scaling factors: what kvd_scales_load loads from real safetensors
checkpoints (written with the safetensors library) and vLLM/SGLang JSON files,
and what it refuses, with messages that name the file and the key or layer.

Runs the probe $KVPOOL_BUILD/tests/scales/scales_probe, which calls
kvd_scales_load exactly as the daemon does and prints the result as JSON.
"""
import json
import os
import struct
import subprocess

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

L = 4


@pytest.fixture(scope="session")
def probe():
    build = os.environ.get("KVPOOL_BUILD")
    assert build, "KVPOOL_BUILD must name the meson build directory"
    path = os.path.join(build, "tests", "scales", "scales_probe")
    assert os.access(path, os.X_OK), f"{path} is missing: build the project first"
    return path


def run(probe, cfg, layers=L, dtype="fp8_e4m3"):
    text = "null" if cfg is None else json.dumps(cfg)
    p = subprocess.run([probe, text, str(layers), dtype], capture_output=True, text=True, errors="replace",
                       timeout=30)
    return p


def load(probe, cfg, layers=L, dtype="fp8_e4m3"):
    p = run(probe, cfg, layers, dtype)
    assert p.returncode == 0, f"probe failed: {p.stderr}"
    return json.loads(p.stdout)


def refuse(probe, cfg, *needles, layers=L, dtype="fp8_e4m3"):
    p = run(probe, cfg, layers, dtype)
    assert p.returncode == 1, f"expected a refusal, got rc {p.returncode}: {p.stdout}{p.stderr}"
    for n in needles:
        assert n in p.stderr, f"message {p.stderr!r} lacks {n!r}"
    return p.stderr


def f32(x):
    return float(np.float32(x))


def st(path):
    return {"source": "safetensors", "path": str(path)}


# ---- safetensors: valid ------------------------------------------------------

K = [0.0152, 0.0188, 0.25, 3.5]
V = [0.5, 0.0078125, 1.75, 0.0021]


def scale_tensors(dtype=np.float32, shape=(), spelling="self_attn", layers=range(L), k=K, v=V):
    t = {}
    for layer in layers:
        if spelling == "self_attn":
            kn = f"model.layers.{layer}.self_attn.k_scale"
            vn = f"model.layers.{layer}.self_attn.v_scale"
        else:
            kn = f"model.layers.{layer}.self_attn.k_proj.k_scale"
            vn = f"model.layers.{layer}.self_attn.v_proj.v_scale"
        t[kn] = np.full(shape, k[layer], dtype=dtype)
        t[vn] = np.full(shape, v[layer], dtype=dtype)
    return t


def weights(layers=range(L)):
    # Ordinary tensors around the scales, as in a real checkpoint.
    t = {"model.embed_tokens.weight": np.arange(64, dtype=np.float32).reshape(8, 8)}
    for layer in layers:
        t[f"model.layers.{layer}.self_attn.k_proj.weight"] = np.ones((4, 8), dtype=np.float32)
        t[f"model.layers.{layer}.self_attn.k_proj.weight_scale"] = np.array(0.01, dtype=np.float32)
    return t


def test_single_file_f32(probe, tmp_path):
    path = tmp_path / "model.safetensors"
    save_file({**weights(), **scale_tensors()}, str(path))
    got = load(probe, st(path))
    assert got["source"] == "safetensors"
    assert got["path"] == str(path)
    assert got["k"] == [f32(x) for x in K]
    assert got["v"] == [f32(x) for x in V]
    assert got["k_min"] == f32(min(K)) and got["k_max"] == f32(max(K))
    assert got["v_min"] == f32(min(V)) and got["v_max"] == f32(max(V))
    assert got["warn_unscaled"] == 0
    # e5m2 pools use the same tensors
    assert load(probe, st(path), dtype="fp8_e5m2")["k"] == [f32(x) for x in K]


def test_k_proj_spelling_and_shape_1(probe, tmp_path):
    path = tmp_path / "modelopt.safetensors"
    save_file(scale_tensors(shape=(1,), spelling="proj"), str(path))
    got = load(probe, st(path))
    assert got["k"] == [f32(x) for x in K]
    assert got["v"] == [f32(x) for x in V]


def test_bf16_scalars_are_bf16_rounded(probe, tmp_path):
    path = tmp_path / "bf16.safetensors"
    save_file(scale_tensors(dtype=ml_dtypes.bfloat16), str(path))
    got = load(probe, st(path))
    assert got["k"] == [float(ml_dtypes.bfloat16(x)) for x in K]
    assert got["v"] == [float(ml_dtypes.bfloat16(x)) for x in V]
    assert got["k"][0] != f32(K[0])  # really rounded, not read as f32


def test_f16_scalars_including_subnormal(probe, tmp_path):
    k = [0.0152, 3.0e-6, 65504.0, 1.0]  # 3e-6 is an f16 subnormal
    path = tmp_path / "f16.safetensors"
    save_file(scale_tensors(dtype=np.float16, k=k), str(path))
    got = load(probe, st(path))
    assert got["k"] == [float(np.float16(x)) for x in k]
    assert got["v"] == [float(np.float16(x)) for x in V]


def write_sharded(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    s1 = {**weights(range(0, 2)), **scale_tensors(layers=range(0, 2))}
    s2 = {**weights(range(2, L)), **scale_tensors(layers=range(2, L), spelling="proj")}
    save_file(s1, str(d / "model-00001-of-00002.safetensors"))
    save_file(s2, str(d / "model-00002-of-00002.safetensors"))
    wm = {n: "model-00001-of-00002.safetensors" for n in s1}
    wm.update({n: "model-00002-of-00002.safetensors" for n in s2})
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": wm}))
    return d


def test_sharded_checkpoint_index(probe, tmp_path):
    d = write_sharded(tmp_path)
    got = load(probe, st(d / "model.safetensors.index.json"))
    assert got["k"] == [f32(x) for x in K]
    assert got["v"] == [f32(x) for x in V]
    # the model folder itself works too
    assert load(probe, st(d))["v"] == [f32(x) for x in V]


def test_sharded_missing_shard_names_it(probe, tmp_path):
    d = write_sharded(tmp_path)
    os.unlink(d / "model-00002-of-00002.safetensors")
    refuse(probe, st(d / "model.safetensors.index.json"), "model-00002-of-00002.safetensors", "cannot open")


def test_sharded_index_promises_a_tensor_the_shard_lacks(probe, tmp_path):
    d = write_sharded(tmp_path)
    idx = d / "model.safetensors.index.json"
    j = json.loads(idx.read_text())
    # move layer 3's v_scale to shard 1 in the map only
    j["weight_map"]["model.layers.3.self_attn.v_proj.v_scale"] = "model-00001-of-00002.safetensors"
    idx.write_text(json.dumps(j))
    refuse(probe, st(idx), "model-00001-of-00002.safetensors", "model.layers.3.self_attn.v_proj.v_scale",
           "not in this shard")


# ---- safetensors: broken -----------------------------------------------------

def valid_file(tmp_path, name="m.safetensors"):
    path = tmp_path / name
    save_file(scale_tensors(), str(path))
    return path


def test_file_shorter_than_header_length_field(probe, tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    refuse(probe, st(path), str(path), "too short for the 8-byte header length")


def test_truncated_header(probe, tmp_path):
    path = valid_file(tmp_path)
    data = path.read_bytes()
    (hlen,) = struct.unpack("<Q", data[:8])
    path.write_bytes(data[: 8 + hlen // 2])
    refuse(probe, st(path), str(path), f"header length {hlen} runs past the end of the file")


def test_header_length_past_end(probe, tmp_path):
    path = valid_file(tmp_path)
    data = bytearray(path.read_bytes())
    data[:8] = struct.pack("<Q", 1 << 40)
    path.write_bytes(bytes(data))
    refuse(probe, st(path), str(path), f"header length {1 << 40} runs past the end")


def test_header_not_json(probe, tmp_path):
    path = tmp_path / "garbage.safetensors"
    hdr = b'{"model.layers.0.self_attn.k_scale": {"dtype": "F32", '
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 8)
    refuse(probe, st(path), str(path), "not valid JSON")


def test_wrong_dtype_i32(probe, tmp_path):
    path = tmp_path / "i32.safetensors"
    t = scale_tensors()
    t["model.layers.2.self_attn.k_scale"] = np.array(1, dtype=np.int32)
    save_file(t, str(path))
    refuse(probe, st(path), str(path), "model.layers.2.self_attn.k_scale", "dtype I32, expected F32, BF16 or F16")


def test_non_scalar_shape(probe, tmp_path):
    path = tmp_path / "vec.safetensors"
    t = scale_tensors()
    t["model.layers.1.self_attn.v_scale"] = np.ones((8,), dtype=np.float32)
    save_file(t, str(path))
    refuse(probe, st(path), str(path), "model.layers.1.self_attn.v_scale", "shape [8], expected a scalar")


def test_missing_layer(probe, tmp_path):
    path = tmp_path / "missing.safetensors"
    t = scale_tensors()
    del t["model.layers.2.self_attn.v_scale"]
    save_file(t, str(path))
    refuse(probe, st(path), str(path), "layer 2: no v_scale tensor", "model.layers.2.self_attn.v_scale")
    # a pool with more layers than the checkpoint
    path2 = valid_file(tmp_path, "four.safetensors")
    refuse(probe, st(path2), str(path2), "layer 4: no k_scale tensor", layers=L + 1)


def test_layer_beyond_pool(probe, tmp_path):
    path = valid_file(tmp_path)
    refuse(probe, st(path), str(path), "model.layers.3.self_attn.k_scale", "layer 3, but the pool has 3 layers",
           layers=3)


def test_nan_and_negative(probe, tmp_path):
    for bad, text in ((float("nan"), "value nan"), (-0.5, "value -0.5"), (0.0, "value 0"), (float("inf"), "value inf")):
        path = tmp_path / f"bad-{text.replace(' ', '_')}.safetensors"
        t = scale_tensors()
        t["model.layers.3.self_attn.k_scale"] = np.array(bad, dtype=np.float32)
        save_file(t, str(path))
        refuse(probe, st(path), str(path), "model.layers.3.self_attn.k_scale (layer 3)", text)


def test_both_spellings_for_one_layer(probe, tmp_path):
    path = tmp_path / "dup.safetensors"
    t = scale_tensors()
    t["model.layers.0.self_attn.k_proj.k_scale"] = np.array(0.5, dtype=np.float32)
    save_file(t, str(path))
    refuse(probe, st(path), str(path), "layer 0 has two k_scale tensors")


def test_offsets_outside_data(probe, tmp_path):
    hdr = json.dumps({
        f"model.layers.{i}.self_attn.{kv}_scale": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}
        for i in range(L) for kv in "kv"
    } | {"model.layers.0.self_attn.k_scale": {"dtype": "F32", "shape": [], "data_offsets": [4, 8]}}).encode()
    path = tmp_path / "offs.safetensors"
    path.write_bytes(struct.pack("<Q", len(hdr)) + hdr + struct.pack("<f", 0.5))
    refuse(probe, st(path), str(path), "model.layers.0.self_attn.k_scale", "outside the data section (4 bytes)")


def raw_checkpoint(path, hdr, data):
    """A safetensors file written by hand (the library refuses to write a
    corrupt one): header hdr (a dict), then data."""
    text = json.dumps(hdr).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    return path


def test_overlapping_offsets(probe, tmp_path):
    # every scale of every layer on the same four bytes: each scale is the
    # same plausible 0.5, read without a word before
    hdr = {f"model.layers.{i}.self_attn.{kv}_scale": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}
           for i in range(L) for kv in "kv"}
    path = raw_checkpoint(tmp_path / "shared.safetensors", hdr, struct.pack("<f", 0.5))
    refuse(probe, st(path), str(path), "overlap", "model.layers.0.self_attn.k_scale")
    # a scale whose bytes lie inside another tensor's (the bytes of a weight
    # read as a scale); the header's order is not the data's
    hdr = {f"model.layers.{i}.self_attn.{kv}_scale": {"dtype": "F32", "shape": [],
                                                       "data_offsets": [64 + 8 * i + 4 * (kv == "v"),
                                                                        68 + 8 * i + 4 * (kv == "v")]}
           for i in range(L) for kv in "kv"}
    hdr["model.layers.2.self_attn.v_scale"]["data_offsets"] = [8, 12]
    hdr["model.embed_tokens.weight"] = {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}
    data = struct.pack("<16f", *[0.25] * 16) + struct.pack(f"<{2 * L}f", *[0.5] * (2 * L))
    path = raw_checkpoint(tmp_path / "inside.safetensors", hdr, data)
    refuse(probe, st(path), str(path), "overlap", "model.embed_tokens.weight", "model.layers.2.self_attn.v_scale")
    # a valid file with the header in another order than the data loads
    del hdr["model.layers.2.self_attn.v_scale"]
    hdr["model.layers.2.self_attn.v_scale"] = {"dtype": "F32", "shape": [], "data_offsets": [96, 100]}
    data = data + struct.pack("<f", 0.125)
    path = raw_checkpoint(tmp_path / "reordered.safetensors", hdr, data)
    got = load(probe, st(path))
    assert got["v"] == [0.5, 0.5, 0.125, 0.5]


def test_truncated_data_of_another_tensor(probe, tmp_path):
    # the scales are whole but a weight after them runs past the end of the
    # file: a truncated checkpoint, loaded before
    good = valid_file(tmp_path, "full.safetensors").read_bytes()
    (hlen,) = struct.unpack("<Q", good[:8])
    hdr, data = json.loads(good[8:8 + hlen]), good[8 + hlen:]
    hdr["model.layers.0.mlp.down_proj.weight"] = {"dtype": "F32", "shape": [64, 64],
                                                  "data_offsets": [len(data), len(data) + 64 * 64 * 4]}
    path = raw_checkpoint(tmp_path / "cut.safetensors", hdr, data + b"\0" * 1000)
    refuse(probe, st(path), str(path), "model.layers.0.mlp.down_proj.weight", "outside the data section")
    # __metadata__ has no data and is no tensor
    del hdr["model.layers.0.mlp.down_proj.weight"]
    hdr["__metadata__"] = {"format": "pt"}
    path = raw_checkpoint(tmp_path / "meta.safetensors", hdr, data)
    assert load(probe, st(path))["k"] == [f32(x) for x in K]


def test_safetensors_on_bf16_pool_refused(probe, tmp_path):
    path = valid_file(tmp_path)
    refuse(probe, st(path), "only to fp8 pools", "bf16", dtype="bf16")


# ---- JSON (vLLM / SGLang --quantization-param-path) ---------------------------

def qp(tmp_path, sf, dtype="float8_e4m3fn", name="kv.json", raw=None):
    path = tmp_path / name
    doc = {"model_type": "llama", "kv_cache": {"dtype": dtype, "scaling_factor": sf}}
    path.write_text(raw if raw is not None else json.dumps(doc))
    return path


def js(path, rank=None):
    c = {"source": "json", "path": str(path)}
    if rank is not None:
        c["tp_rank"] = rank
    return c


def layers(vals):
    return {str(i): x for i, x in enumerate(vals)}


def test_json_valid_two_ranks(probe, tmp_path):
    path = qp(tmp_path, {"0": layers(K), "1": layers(V)})
    got = load(probe, js(path))
    assert got["source"] == "json" and got["path"] == str(path)
    assert got["k"] == [f32(x) for x in K]
    assert got["v"] == got["k"]  # one factor serves K and V
    got = load(probe, js(path, 1))
    assert got["k"] == [f32(x) for x in V]
    assert got["warn_unscaled"] == 0
    # e5m2 file for an e5m2 pool
    path5 = qp(tmp_path, {"0": layers(K)}, dtype="float8_e5m2", name="e5.json")
    assert load(probe, js(path5), dtype="fp8_e5m2")["k"] == [f32(x) for x in K]


def test_json_wrong_dtype(probe, tmp_path):
    path = qp(tmp_path, {"0": layers(K)}, dtype="float8_e5m2")
    refuse(probe, js(path), str(path), "kv_cache.dtype", 'expected "float8_e4m3fn"', '"float8_e5m2"')
    path2 = qp(tmp_path, {"0": layers(K)}, name="e4.json")
    refuse(probe, js(path2), str(path2), "kv_cache.dtype", 'expected "float8_e5m2"', dtype="fp8_e5m2")


def test_json_missing_rank(probe, tmp_path):
    path = qp(tmp_path, {"0": layers(K), "2": layers(K)})
    refuse(probe, js(path), str(path), "kv_cache.scaling_factor", 'rank "1" is missing')


def test_json_tp_rank_beyond_ranks(probe, tmp_path):
    path = qp(tmp_path, {"0": layers(K)})
    refuse(probe, js(path, 1), str(path), "tp_rank 1 requested but the file has 1 rank")


def test_json_missing_layer(probe, tmp_path):
    sf = layers(K)
    del sf["2"]
    path = qp(tmp_path, {"0": sf})
    refuse(probe, js(path), str(path), 'kv_cache.scaling_factor."0"', 'layer "2" is missing')


def test_json_missing_layer_in_other_rank(probe, tmp_path):
    sf = layers(K)
    del sf["3"]
    path = qp(tmp_path, {"0": layers(K), "1": sf})
    refuse(probe, js(path, 0), str(path), 'kv_cache.scaling_factor."1"', 'layer "3" is missing')


def test_json_extra_layer(probe, tmp_path):
    path = qp(tmp_path, {"0": layers(K + [0.5])})
    refuse(probe, js(path), str(path), 'layer "4" is extra', '"0".."3"')


def test_json_non_numeric(probe, tmp_path):
    sf = layers(K)
    sf["1"] = "0.0188"
    path = qp(tmp_path, {"0": sf})
    refuse(probe, js(path), str(path), 'kv_cache.scaling_factor."0"."1"', "expected a positive finite float of at least 2^-126, got a string")
    sf["1"] = None
    path = qp(tmp_path, {"0": sf}, name="null.json")
    refuse(probe, js(path), str(path), 'kv_cache.scaling_factor."0"."1"', "got null")


def test_json_non_index_key(probe, tmp_path):
    sf = layers(K)
    sf["layer1"] = sf.pop("1")
    path = qp(tmp_path, {"0": sf})
    refuse(probe, js(path), str(path), 'key "layer1" is not a layer index')


def test_json_nan(probe, tmp_path):
    sf = layers(K)
    sf["2"] = float("nan")
    path = qp(tmp_path, {"0": sf})
    assert "NaN" in path.read_text()  # Python writes the non-JSON token
    refuse(probe, js(path), str(path), "not valid JSON", '"2": NaN')


def test_json_inf_negative_zero(probe, tmp_path):
    for bad, text in (("1e999", "got inf"), ("-0.0152", "got -0.0152"), ("0", "got 0")):
        raw = '{"kv_cache": {"dtype": "float8_e4m3fn", "scaling_factor": {"0": {"0": 1, "1": %s, "2": 1, "3": 1}}}}' % bad
        path = qp(tmp_path, None, raw=raw, name=f"bad{bad}.json")
        refuse(probe, js(path), str(path), 'kv_cache.scaling_factor."0"."1"', text)


def test_json_subnormal_repeated_key_trailing_text(probe, tmp_path):
    # a subnormal scale would saturate every value written with it
    raw = '{"kv_cache": {"dtype": "float8_e4m3fn", "scaling_factor": {"0": {"0": 1, "1": 1e-40, "2": 1, "3": 1}}}}'
    path = qp(tmp_path, None, raw=raw, name="sub.json")
    refuse(probe, js(path), str(path), 'kv_cache.scaling_factor."0"."1"', "at least 2^-126")
    # cJSON keeps both copies of a repeated key: refused, naming it
    raw = '{"kv_cache": {"dtype": "float8_e4m3fn", "scaling_factor": {"0": {"0": 1, "1": 1, "1": 2, "2": 1, "3": 1}}}}'
    path = qp(tmp_path, None, raw=raw, name="dup.json")
    refuse(probe, js(path), str(path), 'kv_cache.scaling_factor.0: key "1" given twice')
    raw = '{"kv_cache": {"dtype": "float8_e4m3fn", "scaling_factor": {"0": {"0": 1, "1": 1, "2": 1, "3": 1}}}} x'
    path = qp(tmp_path, None, raw=raw, name="tail.json")
    refuse(probe, js(path), str(path), "text after the JSON value")
    # cJSON would end the string at the NUL and read the dtype as
    # float8_e4m3fn: an escaped one, and a raw 0 byte, which cJSON takes into
    # a string as well (JSON forbids control characters there)
    for nul, name, text in (("\\u0000", "nul.json", "\\u0000 in a string"),
                            ("\x00", "rawnul.json", "as a raw 0 byte")):
        raw = '{"kv_cache": {"dtype": "float8_e4m3fn%sx", "scaling_factor": {"0": {"0": 1, "1": 1}}}}' % nul
        path = qp(tmp_path, None, raw=raw, name=name)
        refuse(probe, js(path), str(path), text)


def test_scale_path_that_is_a_fifo(probe, tmp_path):
    # opening a FIFO for reading would wait for a writer: refused at once
    path = tmp_path / "scales.fifo"
    os.mkfifo(path)
    refuse(probe, js(path), str(path), "not a regular file")


def test_safetensors_subnormal_f32(probe, tmp_path):
    k = [0.0152, 1e-40, 1.0, 1.0]
    path = tmp_path / "sub.safetensors"
    save_file(scale_tensors(dtype=np.float32, k=k), str(path))
    refuse(probe, st(path), str(path), "at least 2^-126")


def test_json_missing_file(probe, tmp_path):
    path = tmp_path / "nope.json"
    refuse(probe, js(path), str(path), "cannot open")


def test_json_on_fp4_pool_refused(probe, tmp_path):
    path = qp(tmp_path, {"0": layers(K)})
    refuse(probe, js(path), "only to fp8 pools", "fp4_e2m1", dtype="fp4_e2m1")


# ---- constant -------------------------------------------------------------------

def test_constant(probe):
    got = load(probe, None)
    assert got["source"] == "constant" and got["k"] == [1.0] * L and got["warn_unscaled"] == 1
    got = load(probe, {"source": "constant", "k": 0.5, "v": 2})
    assert got["k"] == [0.5] * L and got["v"] == [2.0] * L
    assert load(probe, None, dtype="bf16")["warn_unscaled"] == 0


# ---- robustness ----------------------------------------------------------------

def test_mutated_checkpoints_load_or_refuse_cleanly(probe, tmp_path):
    """Random corruptions of a valid checkpoint and of a valid JSON file: the
    loader either loads positive finite scales or refuses with a message
    naming the file; it never crashes (rc 0 or 1 only)."""
    rng = np.random.default_rng(1234)
    st_path = valid_file(tmp_path, "orig.safetensors")
    js_path = qp(tmp_path, {"0": layers(K), "1": layers(V)}, name="orig.json")
    for src, make_cfg in ((st_path, st), (js_path, js)):
        orig = src.read_bytes()
        for i in range(150):
            data = bytearray(orig)
            for _ in range(int(rng.integers(1, 6))):
                op = rng.integers(0, 4)
                pos = int(rng.integers(0, len(data)))
                if op == 0:
                    data[pos] ^= 1 << int(rng.integers(0, 8))
                elif op == 1:
                    data[pos] = int(rng.integers(0, 256))
                elif op == 2:
                    del data[pos:pos + int(rng.integers(1, 16))]
                else:
                    data[pos:pos] = bytes(rng.integers(0, 256, int(rng.integers(1, 8)), dtype=np.uint8))
            path = tmp_path / f"mut{i}{src.suffix}"
            path.write_bytes(bytes(data))
            p = run(probe, make_cfg(path))
            assert p.returncode in (0, 1), f"{path}: rc {p.returncode}: {p.stderr}"
            if p.returncode == 0:
                got = json.loads(p.stdout)
                assert all(x > 0 and np.isfinite(x) for x in got["k"] + got["v"])
            else:
                assert str(path) in p.stderr, p.stderr
