"""Test peer for tests/pointmae_checkpoint.rs, independent of inspect3d's Rust code:

  pointmae_reference.py write CKPT WIDTH DEPTH HEADS SEED
      writes a checkpoint in the official Point-MAE `pretrain.pth` layout (PyTorch zip format, pickled
      {'base_model': OrderedDict, 'epoch': ...}, MAE_encoder + decoder tensors, BatchNorm buffers) with random
      weights, without needing torch installed.
  pointmae_reference.py forward CKPT HEADS GROUPS CENTRES OUT N K
      runs Point-MAE's encoder forward in numpy on float32 arrays GROUPS (N×K×3) and CENTRES (N×3) and writes
      the tokens (N×C) to OUT.
"""
import collections
import io
import math
import pickle
import sys
import types
import zipfile

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[2] / "scripts"))
import convert_pointmae  # noqa: E402  (the reader under test is not used to write)


def fake_torch():
    """Just enough of torch's module layout for pickle to name the right globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        raise RuntimeError("writer only")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
    torch._utils = utils
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    return torch, utils


class Storage:
    def __init__(self, key, array, storage_type):
        self.key, self.array, self.storage_type = key, array, storage_type


class Tensor:
    def __init__(self, storage, shape, rebuild):
        self.storage, self.shape, self.rebuild = storage, shape, rebuild

    def __reduce_ex__(self, protocol):
        stride, acc = [], 1
        for d in reversed(self.shape):
            stride.insert(0, acc)
            acc *= d
        return (self.rebuild, (self.storage, 0, tuple(self.shape), tuple(stride), False, collections.OrderedDict()))


class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            return ("storage", obj.storage_type, obj.key, "cpu", obj.array.size)
        return None


def official_state(width, depth, rng):
    s = collections.OrderedDict()
    w = lambda *shape: (rng.standard_normal(shape) / math.sqrt(shape[-1] if len(shape) < 3 else shape[1])).astype(np.float32)
    small = lambda *shape: (0.1 * rng.standard_normal(shape)).astype(np.float32)
    e = "MAE_encoder.encoder."
    for conv, cin, cmid, cout in (("first_conv", 3, 128, 256), ("second_conv", 512, 512, width)):
        s[f"{e}{conv}.0.weight"], s[f"{e}{conv}.0.bias"] = w(cmid, cin, 1), small(cmid)
        s[f"{e}{conv}.1.weight"], s[f"{e}{conv}.1.bias"] = 1 + small(cmid), small(cmid)
        s[f"{e}{conv}.1.running_mean"], s[f"{e}{conv}.1.running_var"] = small(cmid), (0.5 + rng.random(cmid)).astype(np.float32)
        s[f"{e}{conv}.1.num_batches_tracked"] = np.array(1000, dtype=np.int64)
        s[f"{e}{conv}.3.weight"], s[f"{e}{conv}.3.bias"] = w(cout, cmid, 1), small(cout)
    s["MAE_encoder.pos_embed.0.weight"], s["MAE_encoder.pos_embed.0.bias"] = w(128, 3), small(128)
    s["MAE_encoder.pos_embed.2.weight"], s["MAE_encoder.pos_embed.2.bias"] = w(width, 128), small(width)
    for i in range(depth):
        b = f"MAE_encoder.blocks.blocks.{i}."
        s[b + "norm1.weight"], s[b + "norm1.bias"] = 1 + small(width), small(width)
        s[b + "attn.qkv.weight"] = w(3 * width, width)
        s[b + "attn.proj.weight"], s[b + "attn.proj.bias"] = w(width, width), small(width)
        s[b + "norm2.weight"], s[b + "norm2.bias"] = 1 + small(width), small(width)
        s[b + "mlp.fc1.weight"], s[b + "mlp.fc1.bias"] = w(4 * width, width), small(4 * width)
        s[b + "mlp.fc2.weight"], s[b + "mlp.fc2.bias"] = w(width, 4 * width), small(width)
    s["MAE_encoder.norm.weight"], s["MAE_encoder.norm.bias"] = 1 + small(width), small(width)
    # The pretraining checkpoint also holds the decoder; the converter must leave it out.
    s["mask_token"] = small(1, 1, width)
    s["MAE_decoder.norm.weight"] = small(width)
    s["increase_dim.0.weight"] = w(96, width, 1)
    return s


def write(path, width, depth, seed):
    torch, utils = fake_torch()
    state = official_state(width, depth, np.random.default_rng(seed))
    storages, wrapped = [], collections.OrderedDict()
    for name, array in state.items():
        kind = torch.LongStorage if array.dtype == np.int64 else torch.FloatStorage
        storage = Storage(str(len(storages)), array, kind)
        storages.append(storage)
        wrapped[name] = Tensor(storage, list(array.shape), utils._rebuild_tensor_v2)
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"base_model": wrapped, "epoch": 300})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("pretrain/data.pkl", buffer.getvalue())
        z.writestr("pretrain/byteorder", "little")
        z.writestr("pretrain/version", "3\n")
        for s in storages:
            z.writestr(f"pretrain/data/{s.key}", s.array.astype(s.array.dtype.newbyteorder("<")).tobytes())


def forward(ckpt, heads, groups, centres):
    s = convert_pointmae.encoder_state(convert_pointmae.load_checkpoint(ckpt))
    p = lambda name: s["MAE_encoder." + name].astype(np.float64)
    erf = np.vectorize(math.erf)
    gelu = lambda x: 0.5 * x * (1 + erf(x / math.sqrt(2)))

    def conv(x, name):  # x: (G, Cin, K)
        return np.einsum("oi,gik->gok", p(name + ".weight")[:, :, 0], x) + p(name + ".bias")[None, :, None]

    def bn(x, name):
        return (x - p(name + ".running_mean")[None, :, None]) / np.sqrt(p(name + ".running_var")[None, :, None] + 1e-5) \
            * p(name + ".weight")[None, :, None] + p(name + ".bias")[None, :, None]

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * p(name + ".weight") + p(name + ".bias")

    x = groups.astype(np.float64).transpose(0, 2, 1)  # (G, 3, K)
    f = conv(np.maximum(bn(conv(x, "encoder.first_conv.0"), "encoder.first_conv.1"), 0), "encoder.first_conv.3")
    f = np.concatenate([np.repeat(f.max(2, keepdims=True), f.shape[2], 2), f], 1)
    f = conv(np.maximum(bn(conv(f, "encoder.second_conv.0"), "encoder.second_conv.1"), 0), "encoder.second_conv.3")
    tokens = f.max(2)  # (G, C)
    pos = gelu(centres @ p("pos_embed.0.weight").T + p("pos_embed.0.bias")) @ p("pos_embed.2.weight").T + p("pos_embed.2.bias")
    n, c = tokens.shape
    d = c // heads
    depth = len({k.split(".")[3] for k in s if k.startswith("MAE_encoder.blocks.blocks.")})
    x = tokens
    for i in range(depth):
        b = f"blocks.blocks.{i}."
        x = x + pos
        qkv = (ln(x, b + "norm1") @ p(b + "attn.qkv.weight").T).reshape(n, 3, heads, d).transpose(1, 2, 0, 3)
        q, k, v = qkv[0], qkv[1], qkv[2]
        a = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        a = np.exp(a - a.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        mixed = (a @ v).transpose(1, 0, 2).reshape(n, c)
        x = x + mixed @ p(b + "attn.proj.weight").T + p(b + "attn.proj.bias")
        h = gelu(ln(x, b + "norm2") @ p(b + "mlp.fc1.weight").T + p(b + "mlp.fc1.bias"))
        x = x + h @ p(b + "mlp.fc2.weight").T + p(b + "mlp.fc2.bias")
    return ln(x, "norm")


def main():
    if sys.argv[1] == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[6]))
    elif sys.argv[1] == "forward":
        ckpt, heads, groups, centres, out, n, k = sys.argv[2:9]
        n, k = int(n), int(k)
        g = np.fromfile(groups, dtype="<f4").reshape(n, k, 3)
        c = np.fromfile(centres, dtype="<f4").reshape(n, 3).astype(np.float64)
        forward(ckpt, int(heads), g, c).astype("<f4").tofile(out)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
