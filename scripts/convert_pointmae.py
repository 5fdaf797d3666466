#!/usr/bin/env python3
"""Converts an official Point-MAE checkpoint (e.g. the ShapeNet `pretrain.pth`) into the safetensors file that
inspect3d loads as its backbone (config: {"backbone": {"kind": "point_mae", "checkpoint": "<out>"}}).

    convert_pointmae.py pretrain.pth pointmae.safetensors [--heads 6]

Keeps the encoder (`MAE_encoder.*`, names unchanged) and drops the decoder, BatchNorm's num_batches_tracked
and any DataParallel `module.` prefix. The head count cannot be read from tensor shapes, so it is recorded in
the file's metadata (the public release uses 6).

Needs only numpy: the checkpoint (PyTorch's zip format, torch >= 1.6) is read with a restricted unpickler that
accepts tensors, storages and ordered dicts and refuses everything else, so no code from the file runs.
"""
import argparse
import collections
import json
import pickle
import struct
import sys
import zipfile

import numpy as np

DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class StorageType:
    def __init__(self, name):
        if name not in DTYPES:
            raise pickle.UnpicklingError(f"unsupported storage type torch.{name}")
        self.dtype = np.dtype(DTYPES[name])


def rebuild_tensor(storage, offset, size, stride, *_):
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def rebuild_parameter(data, *_):
    return data


class CheckpointUnpickler(pickle.Unpickler):
    def __init__(self, file, archive, prefix):
        super().__init__(file)
        self.archive, self.prefix = archive, prefix

    def find_class(self, module, name):
        allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
            ("torch._utils", "_rebuild_parameter"): rebuild_parameter,
            ("torch", "Size"): tuple,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        if module == "torch" and name.endswith("Storage"):
            return StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a checkpoint")

    def persistent_load(self, pid):
        kind, storage_type, key, _location, numel = pid
        if kind != "storage":
            raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
        raw = self.archive.read(f"{self.prefix}/data/{key}")
        return np.frombuffer(raw, dtype=storage_type.dtype, count=numel)


def load_checkpoint(path):
    if not zipfile.is_zipfile(path):
        sys.exit(f"{path}: not a PyTorch zip checkpoint (saved by torch >= 1.6); re-save it with a current torch")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            sys.exit(f"{path}: expected one data.pkl, found {len(pickles)}")
        prefix = pickles[0][: -len("/data.pkl")]
        with archive.open(pickles[0]) as f:
            return CheckpointUnpickler(f, archive, prefix).load()


def encoder_state(checkpoint):
    state = checkpoint
    for key in ("base_model", "model", "state_dict"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
            break
    out = collections.OrderedDict()
    for name, value in state.items():
        name = name[len("module."):] if name.startswith("module.") else name
        if name.startswith("MAE_encoder.") and not name.endswith("num_batches_tracked"):
            out[name] = np.ascontiguousarray(value, dtype=np.float32)
    if "MAE_encoder.norm.weight" not in out:
        sys.exit("no MAE_encoder.* tensors: this is not a Point-MAE pretraining checkpoint")
    return out


def write_safetensors(path, tensors, metadata):
    header, offset, blobs = {"__metadata__": metadata}, 0, []
    for name, array in tensors.items():
        blob = array.astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        blobs.append(blob)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--heads", type=int, default=6, help="attention heads of the checkpoint (Point-MAE: 6)")
    args = parser.parse_args()
    state = encoder_state(load_checkpoint(args.checkpoint))
    width = state["MAE_encoder.norm.weight"].shape[0]
    depth = len({n.split(".")[3] for n in state if n.startswith("MAE_encoder.blocks.blocks.")})
    if width % args.heads:
        sys.exit(f"width {width} is not divisible by {args.heads} heads")
    write_safetensors(args.output, state, {"num_heads": str(args.heads), "width": str(width), "depth": str(depth),
                                           "source": args.checkpoint})
    print(f"{args.output}: {len(state)} tensors, width {width}, depth {depth}, heads {args.heads}")


if __name__ == "__main__":
    main()
