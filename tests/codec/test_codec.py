"""Independent oracle for kernels/kv_codec.h.

Loads $KVPOOL_BUILD/tests/codec/libkvcodec_shim.so with ctypes and compares
every codec with ml_dtypes (float8_e4m3fn, float8_e5m2, float4_e2m1fn,
float8_e8m0fnu, bfloat16) and numpy float16:

  * decode of every 8-bit code and every 4-bit code, bit for bit;
  * encode of more than a million float32 values per format, drawn to hit
    +-0, f32 subnormals, every binade, exact ties between neighbouring
    representable values (and one f32 ulp either side), values at and beyond
    the format's max, NaN with several payloads and +-Inf.

Bit-exact agreement is the bar.  Where kvpool differs from ml_dtypes' cast by
design, the rule is stated in the test that checks it:
  * FP8 saturates: a finite value that ml_dtypes turns into NaN (e4m3fn) or
    Inf (e5m2), and +-Inf itself, encode to +-max (e4m3 0x7E/0xFE = 448,
    e5m2 0x7B/0xFB = 57344).  A pool never stores an infinity.
  * FP8 NaN -> the canonical NaN with the input's sign (e4m3 0x7F|s,
    e5m2 0x7E|s).
  * FP4 NaN -> +0 (nibble 0x0); ml_dtypes' float4_e2m1fn gives a signed zero
    whose sign is not the NaN's.
  * bf16/f16 NaN -> a quiet NaN with the input's sign (checked as NaN + sign).
"""
import ctypes
import os
import pathlib

import ml_dtypes
import numpy as np
import pytest

F32P = ctypes.POINTER(ctypes.c_float)
U8P = ctypes.POINTER(ctypes.c_uint8)
U16P = ctypes.POINTER(ctypes.c_uint16)
SZ = ctypes.c_size_t


def _load():
    build = os.environ.get("KVPOOL_BUILD")
    if not build:
        pytest.fail("KVPOOL_BUILD is not set: point it at the meson build directory")
    path = pathlib.Path(build) / "tests" / "codec" / "libkvcodec_shim.so"
    if not path.is_file():
        pytest.fail(f"{path} not found: build the project first (ninja -C {build})")
    lib = ctypes.CDLL(str(path))
    sig = {
        "shim_e4m3_encode": [F32P, U8P, SZ], "shim_e4m3_decode": [U8P, F32P, SZ],
        "shim_e5m2_encode": [F32P, U8P, SZ], "shim_e5m2_decode": [U8P, F32P, SZ],
        "shim_e2m1_encode": [F32P, U8P, SZ], "shim_e2m1_decode": [U8P, F32P, SZ],
        "shim_e8m0_decode": [U8P, F32P, SZ], "shim_e8m0_inv": [U8P, F32P, SZ],
        "shim_fp4_block_scale": [F32P, U8P, SZ],
        "shim_fp4_encode_blocks": [F32P, SZ, U8P, U8P],
        "shim_fp4_decode_blocks": [U8P, U8P, SZ, F32P],
        "shim_e2m1x8_encode": [F32P, ctypes.c_float, U8P, SZ],
        "shim_fp8x4_encode": [ctypes.c_int, F32P, U8P, SZ],
        "shim_fp8x4_decode": [ctypes.c_int, U8P, F32P, SZ],
        "shim_bf16_encode": [F32P, U16P, SZ], "shim_bf16_decode": [U16P, F32P, SZ],
        "shim_f16_encode": [F32P, U16P, SZ], "shim_f16_decode": [U16P, F32P, SZ],
    }
    for name, args in sig.items():
        fn = getattr(lib, name)
        fn.argtypes = args
        fn.restype = None
    return lib


@pytest.fixture(scope="module")
def lib():
    return _load()


def _p(a, t):
    return a.ctypes.data_as(t)


def encode8(lib, name, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.size, np.uint8)
    getattr(lib, name)(_p(x, F32P), _p(out, U8P), x.size)
    return out


def encode16(lib, name, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(x.size, np.uint16)
    getattr(lib, name)(_p(x, F32P), _p(out, U16P), x.size)
    return out


def decode(lib, name, codes):
    codes = np.ascontiguousarray(codes)
    out = np.empty(codes.size, np.float32)
    getattr(lib, name)(_p(codes, U16P if codes.dtype == np.uint16 else U8P), _p(out, F32P), codes.size)
    return out


def bits(x):
    return np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)


def assert_bits_equal(got, want, x, what):
    bad = np.nonzero(got != want)[0]
    if bad.size:
        i = bad[:8]
        pytest.fail(f"{what}: {bad.size} mismatches, e.g. x={x[i].tolist()} "
                    f"(bits {[hex(b) for b in bits(x[i])]}) got {[hex(v) for v in got[i]]} "
                    f"want {[hex(v) for v in want[i]]}")


# ---- sample -----------------------------------------------------------------

def finite_values(dtype):
    """All finite values of an ml_dtypes/numpy dtype (<= 16 bits), sorted, unique, as f64."""
    n = 1 << (8 * np.dtype(dtype).itemsize)
    codes = np.arange(n, dtype=np.uint16 if n > 256 else np.uint8)
    with np.errstate(invalid="ignore"):
        v = codes.view(dtype).astype(np.float64)
    return np.unique(v[np.isfinite(v)])


def sample(dtype, rng, n_random=700_000):
    """More than a million float32 values aimed at the format `dtype`."""
    parts = []
    # +-0, NaN with several payloads and both signs, +-Inf
    special = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                        0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF, 0x7FA00000, 0x7FE00000],
                       dtype=np.uint32)
    parts.append(special.view(np.float32))
    # every binade of float32 (exponent field 0 = subnormals, 255 = Inf/NaN),
    # both signs, random mantissas: 256 * 2000 values
    e = np.repeat(np.arange(256, dtype=np.uint32), 2000)
    m = rng.integers(0, 1 << 23, e.size, dtype=np.uint32)
    s = rng.integers(0, 2, e.size, dtype=np.uint32)
    parts.append(((s << 31) | (e << 23) | m).view(np.float32))
    # dense in the format's own range: uniform bits between the smallest
    # subnormal / 4 and 4 * max
    fv = finite_values(dtype)
    pos = fv[fv > 0]
    lo = bits(np.float32(pos[0] / 4))[0]
    hi = bits(np.float32(min(pos[-1] * 4, 3.0e38)))[0]
    u = rng.integers(lo, hi, n_random, dtype=np.uint32)
    s = rng.integers(0, 2, n_random, dtype=np.uint32)
    parts.append(((s << 31) | u).view(np.float32))
    # exact ties between neighbouring representable values (including 0 and
    # the smallest subnormal, and max and the value one step above it), and
    # one f32 ulp either side of each
    step_above_max = pos[-1] + (pos[-1] - pos[-2])
    grid = np.concatenate([[0.0], pos, [step_above_max]])
    mid = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)
    assert np.all(mid.astype(np.float64) == (grid[:-1] + grid[1:]) / 2), "ties must be exact in f32"
    ties = np.concatenate([mid, np.nextafter(mid, np.float32(np.inf)), np.nextafter(mid, np.float32(0))])
    ties = np.tile(ties, max(1, 40_000 // ties.size))
    parts += [ties, -ties]
    # the representable values themselves and values at/beyond max
    mx = np.float32(pos[-1])
    with np.errstate(over="ignore"):
        around = np.array([mx, np.nextafter(mx, np.float32(np.inf)), mx * 1.01, mx * 2, mx * 1e3,
                           1e30, 3.4028235e38, np.float32(step_above_max)], np.float32)
    parts += [fv.astype(np.float32), around, -around]
    x = np.concatenate([p.astype(np.float32) for p in parts])
    assert x.size >= 1_000_000
    return x


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(20261129)


# ---- decode of every code ---------------------------------------------------

@pytest.mark.parametrize("name,dtype", [("e4m3", ml_dtypes.float8_e4m3fn),
                                        ("e5m2", ml_dtypes.float8_e5m2),
                                        ("e8m0", ml_dtypes.float8_e8m0fnu)])
def test_decode_every_8bit_code(lib, name, dtype):
    codes = np.arange(256, dtype=np.uint8)
    got = decode(lib, f"shim_{name}_decode", codes)
    want = codes.view(dtype).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan), f"{name}: NaN codes differ"
    # NaN keeps the code's sign (E8M0 has no sign: its NaN is just NaN)
    if name != "e8m0":
        assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
    assert_bits_equal(bits(got[~nan]), bits(want[~nan]), codes[~nan].astype(np.float32), f"{name} decode")
    # the x4 helpers give the same bits as the scalar decoder
    if name != "e8m0":
        got4 = np.empty(256, np.float32)
        lib.shim_fp8x4_decode(0 if name == "e4m3" else 1, _p(codes, U8P), _p(got4, F32P), 256)
        assert np.array_equal(bits(got4), bits(got))


def test_e4m3_nan_codes_and_no_infinity(lib):
    codes = np.arange(256, dtype=np.uint8)
    got = decode(lib, "shim_e4m3_decode", codes)
    assert set(np.nonzero(np.isnan(got))[0].tolist()) == {0x7F, 0xFF}
    assert not np.isinf(got).any()
    assert got[0x7E] == 448.0 and got[0xFE] == -448.0


def test_e8m0_inverse(lib):
    codes = np.arange(256, dtype=np.uint8)
    inv = decode(lib, "shim_e8m0_inv", codes)
    want = np.ldexp(1.0, 127 - codes[:255].astype(np.int64))
    assert np.array_equal(inv[:255].astype(np.float64), want)
    assert np.isnan(inv[255])


def test_decode_every_4bit_code(lib):
    codes = np.arange(16, dtype=np.uint8)
    got = decode(lib, "shim_e2m1_decode", codes)
    want = codes.view(ml_dtypes.float4_e2m1fn).astype(np.float32)
    assert_bits_equal(bits(got), bits(want), codes.astype(np.float32), "e2m1 decode")
    assert got[:8].tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]


@pytest.mark.parametrize("name,dtype", [("bf16", ml_dtypes.bfloat16), ("f16", np.float16)])
def test_decode_every_16bit_code(lib, name, dtype):
    codes = np.arange(1 << 16, dtype=np.uint16)
    got = decode(lib, f"shim_{name}_decode", codes)
    want = codes.view(dtype).astype(np.float32)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(got), nan)
    assert np.array_equal(np.signbit(got[nan]), np.signbit(want[nan]))
    assert_bits_equal(bits(got[~nan]), bits(want[~nan]), codes[~nan].astype(np.float32), f"{name} decode")


# ---- encode -----------------------------------------------------------------

FP8 = [("e4m3", ml_dtypes.float8_e4m3fn, 0x7E, 0x7F, 0),
       ("e5m2", ml_dtypes.float8_e5m2, 0x7B, 0x7E, 1)]


@pytest.mark.parametrize("name,dtype,maxcode,nancode,fmt", FP8)
def test_fp8_encode_matches_ml_dtypes(lib, rng, name, dtype, maxcode, nancode, fmt):
    x = sample(dtype, rng)
    got = encode8(lib, f"shim_{name}_encode", x)
    with np.errstate(all="ignore"):
        want_f = x.astype(dtype)
    want = want_f.view(np.uint8)
    ref_finite = np.isfinite(want_f.astype(np.float32))
    sign = np.signbit(x).astype(np.uint8) << 7

    # 1. every finite input whose ml_dtypes result is finite: bit for bit
    m = np.isfinite(x) & ref_finite
    assert m.sum() > 900_000
    assert_bits_equal(got[m], want[m], x[m], f"{name} encode")

    # 2. rule: finite inputs that ml_dtypes rounds past max (to NaN for e4m3fn,
    #    Inf for e5m2) saturate to +-max; so does +-Inf
    sat = (np.isfinite(x) & ~ref_finite) | np.isinf(x)
    assert sat.sum() > 1000
    assert np.array_equal(got[sat], sign[sat] | maxcode)
    # every one of them is beyond the format's max (no in-range value saturates)
    assert np.all(np.abs(x[sat]) > np.array([maxcode], np.uint8).view(dtype).astype(np.float32)[0])

    # 3. rule: NaN -> canonical NaN with the input's sign
    nan = np.isnan(x)
    assert nan.sum() > 1000
    assert np.array_equal(got[nan], sign[nan] | nancode)

    # the x4 helper encodes exactly as the scalar encoder
    n4 = x.size // 4 * 4
    got4 = np.empty(n4, np.uint8)
    lib.shim_fp8x4_encode(fmt, _p(x, F32P), _p(got4, U8P), n4)
    assert np.array_equal(got4, got[:n4])


@pytest.mark.parametrize("name,want", [
    ("e4m3", {448.0: 0x7E, 500.0: 0x7E, 464.0: 0x7E, 464.0001: 0x7E, 1e-9: 0x00, -1e-9: 0x80,
              2.0 ** -9: 0x01, 2.0 ** -10: 0x00, 1.5 * 2.0 ** -10: 0x01, 2.0 ** -6: 0x08,
              1.0: 0x38, -2.0: 0xC0, 17.0: 0x58, 19.0: 0x5A}),
    ("e5m2", {57344.0: 0x7B, 61440.0: 0x7B, 1e9: 0x7B, 2.0 ** -16: 0x01, 2.0 ** -17: 0x00,
              1.0: 0x3C, -1.5: 0xBE, 1.125: 0x3C, 1.375: 0x3E}),
])
def test_fp8_known_values(lib, name, want):
    x = np.array(list(want.keys()), np.float32)
    got = encode8(lib, f"shim_{name}_encode", x)
    assert got.tolist() == list(want.values())


def test_e2m1_encode_matches_ml_dtypes(lib, rng):
    x = sample(ml_dtypes.float4_e2m1fn, rng)
    got = encode8(lib, "shim_e2m1_encode", x)
    with np.errstate(all="ignore"):
        want = x.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    # finite inputs (including those beyond +-6: both saturate to +-6 = 0x7/0xF)
    # and +-Inf (saturate): bit for bit
    m = ~np.isnan(x)
    assert_bits_equal(got[m], want[m], x[m], "e2m1 encode")
    assert np.all((got[np.abs(x) > 6] & 7) == 7)
    # rule: NaN -> +0 (ml_dtypes gives a zero of arbitrary sign)
    assert np.all(got[np.isnan(x)] == 0)
    # the x8 helper (with inv_scale 1) packs the scalar results, even element low
    n8 = x.size // 8 * 8
    packed = np.empty(n8 // 2, np.uint8)
    lib.shim_e2m1x8_encode(_p(x, F32P), 1.0, _p(packed, U8P), n8)
    assert np.array_equal(packed & 0xF, got[:n8:2])
    assert np.array_equal(packed >> 4, got[1:n8:2])


@pytest.mark.parametrize("name,dtype", [("bf16", ml_dtypes.bfloat16), ("f16", np.float16)])
def test_16bit_encode_matches(lib, rng, name, dtype):
    x = sample(dtype, rng)
    got = encode16(lib, f"shim_{name}_encode", x)
    with np.errstate(all="ignore"):
        want = x.astype(dtype).view(np.uint16)
    nan = np.isnan(x)
    # every non-NaN input, overflow to Inf included (IEEE formats): bit for bit
    assert_bits_equal(got[~nan], want[~nan], x[~nan], f"{name} encode")
    # rule: NaN -> a quiet NaN with the input's sign
    back = got[nan].view(dtype).astype(np.float32)
    assert np.isnan(back).all()
    assert np.array_equal(np.signbit(back), np.signbit(x[nan]))
    quiet = 0x0040 if name == "bf16" else 0x0200
    assert np.all(got[nan] & quiet)


# ---- FP4 block of 16 ----------------------------------------------------------

def fp4_blocks(rng, nblocks=65536):
    """Blocks whose magnitudes span every binade a block scale can take."""
    x = rng.standard_normal((nblocks, 16)).astype(np.float32)
    # per-block magnitudes 2^-140 .. 2^127 (clipped to the f32 range)
    mag = np.exp2(rng.uniform(-140, 126, nblocks)).astype(np.float32)
    x = (x / np.abs(x).max(axis=1, keepdims=True) * mag[:, None] * 1.5).astype(np.float32)
    # blocks whose amax sits exactly on 6 * 2^e, just above it, and on 1.5 * 2^E
    k = nblocks // 8
    e = rng.integers(-120, 120, k)
    x[:k, 0] = np.ldexp(np.float32(6), e).astype(np.float32)
    x[k:2 * k, 0] = np.nextafter(np.ldexp(np.float32(6), e[:k]).astype(np.float32), np.float32(np.inf))
    x[2 * k:3 * k, 0] = np.ldexp(np.float32(1.5), e[:k]).astype(np.float32)
    x[:3 * k, 1:] = np.clip(x[:3 * k, 1:], -np.abs(x[:3 * k, :1]), np.abs(x[:3 * k, :1]))
    return np.ascontiguousarray(x)


def encode_blocks(lib, x):
    n = x.shape[0]
    packed = np.empty(n * 8, np.uint8)
    scales = np.empty(n, np.uint8)
    lib.shim_fp4_encode_blocks(_p(x, F32P), n, _p(packed, U8P), _p(scales, U8P))
    return packed.reshape(n, 8), scales


def nibbles(packed):
    out = np.empty((packed.shape[0], 16), np.uint8)
    out[:, 0::2] = packed & 0xF
    out[:, 1::2] = packed >> 4
    return out


def test_fp4_block_scale_rule(lib, rng):
    x = fp4_blocks(rng)
    _, scales = encode_blocks(lib, x)
    amax = np.abs(x).max(axis=1).astype(np.float64)
    e = scales.astype(np.int64) - 127
    assert np.all(scales < 255)
    # rule: e = ceil(log2(amax / 6)), clamped to [-127, 127]: the smallest e
    # with 6 * 2^e >= amax (checked exactly in float64) unless clamped at -127
    assert np.all(6 * np.ldexp(1.0, e) >= amax), "an element would clip"
    unclamped = e > -127
    assert np.all(6 * np.ldexp(1.0, e[unclamped] - 1) < amax[unclamped]), "scale not minimal"
    assert np.all(amax[~unclamped] <= 6 * 2.0 ** -127)
    assert unclamped.sum() > 1000 and (~unclamped).sum() > 100
    # the scale byte agrees with ml_dtypes' E8M0 value
    sv = scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    assert np.array_equal(sv, np.ldexp(1.0, e))


def test_fp4_block_elements_match_ml_dtypes_and_never_clip(lib, rng):
    x = fp4_blocks(rng)
    packed, scales = encode_blocks(lib, x)
    scale = scales.view(ml_dtypes.float8_e8m0fnu).astype(np.float64)
    # the reference: x / 2^e (exact in float64), rounded by ml_dtypes
    y = x.astype(np.float64) / scale[:, None]
    assert np.all(np.abs(y) <= 6.0), "an element clips"
    # ml_dtypes' float64 cast rounds an f32 subnormal product the same as f32
    # only when the product itself is representable: compare in f32 where exact
    y32 = y.astype(np.float32)
    exact = y32.astype(np.float64) == y
    want = y32.astype(ml_dtypes.float4_e2m1fn).view(np.uint8)
    got = nibbles(packed)
    # inexact only where |y| underflows f32 (elements far below the block's
    # amax): those must round to zero
    assert exact.mean() > 0.9
    assert np.all(np.abs(y[~exact]) < 2.0 ** -120)
    assert np.array_equal(got[exact], want[exact])
    # the remaining (inexact, i.e. tiny |y| that underflows f32) all round to zero
    assert np.all((got[~exact] & 7) == 0)
    # decode through the x8 helper: e2m1 value times the block scale
    out = np.empty(x.size, np.float32)
    lib.shim_fp4_decode_blocks(_p(packed.ravel(), U8P), _p(scales, U8P), x.shape[0], _p(out, F32P))
    ref = got.view(ml_dtypes.float4_e2m1fn).astype(np.float64) * scale[:, None]
    assert np.array_equal(out.reshape(x.shape).astype(np.float64), ref.astype(np.float32).astype(np.float64))


def test_fp4_block_special_rules(lib):
    blocks = np.zeros((6, 16), np.float32)
    blocks[1, :] = -0.0                          # all -0: scale 1, nibbles 0x8
    blocks[2, :4] = [np.nan, 3.0, -1.5, 0.75]    # NaN -> 0, scale from finite (3 -> 2^-1)
    blocks[3, :3] = [np.inf, -np.inf, 12.0]      # +-Inf -> +-6 x scale; 12 -> 2^1
    blocks[4, :2] = [np.nan, np.inf]             # nothing finite but 0: scale 1
    blocks[5, :] = np.float32(1e-45)             # tiny (subnormal) amax: clamps to 2^-127
    packed, scales = encode_blocks(lib, blocks)
    nib = nibbles(packed)
    assert scales[0] == 127 and np.all(nib[0] == 0)
    assert scales[1] == 127 and np.all(nib[1] == 8)
    assert scales[2] == 126 and nib[2, :4].tolist() == [0, 0x7, 0xD, 0x3]
    assert scales[3] == 128 and nib[3, :3].tolist() == [0x7, 0xF, 0x7]
    assert scales[4] == 127 and nib[4, :2].tolist() == [0, 0x7]
    assert scales[5] == 0 and np.all(nib[5] == 0)


def test_fp4_block_scale_function(lib):
    amax = np.array([0.0, -1.0, np.nan, np.inf, 6.0, 6.0000005, 3.0, 1.5, 12.0, 1e-45,
                     6 * 2.0 ** -127, 3.4028235e38], np.float32)
    out = np.empty(amax.size, np.uint8)
    lib.shim_fp4_block_scale(_p(amax, F32P), _p(out, U8P), amax.size)
    assert out.tolist() == [127, 127, 127, 127, 127, 128, 126, 125, 128, 0, 0, 253]
