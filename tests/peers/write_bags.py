"""Writes rosbag2 bags of PointCloud2 scans with independent writers, for the bag reader's and the training
action's tests.

    write_bags.py OUT TOPIC SCAN.pcd...   (binary PCD files, e.g. from `inspect3d convert --encoding binary`)

Writes OUT/<name>/ for each of:
  mcap_zstd   rosbags, MCAP with zstd-compressed chunks (rosbag2's storage compression), version 9; also holds a
              std_msgs/String topic /status
  mcap_lz4    the same messages rewritten by Foxglove's `mcap` writer with lz4-compressed chunks
  sqlite3     rosbags, sqlite3 (.db3), version 8
  split       two MCAP files (the scans divided between them) listed in one metadata.yaml, as `ros2 bag record
              --max-bag-size` leaves them
  mcap_file_zstd       rosbags, MCAP, the whole file zstd-compressed by rosbag2 (`--compression-mode file`)
  sqlite3_file_zstd    rosbags, sqlite3, the whole file zstd-compressed
  mcap_message_zstd    rosbags, MCAP, each message zstd-compressed (`--compression-mode message`)
  sqlite3_message_zstd rosbags, sqlite3, each message zstd-compressed
One message per scan, stamped 1 s apart, in the order given."""
import shutil
import sys
from pathlib import Path

import numpy as np
import yaml
from mcap.reader import make_reader
from mcap.writer import CompressionType, Writer as McapWriter
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.rosbag2.enums import CompressionFormat, CompressionMode
from rosbags.typesys import Stores, get_typestore

ts = get_typestore(Stores.ROS2_JAZZY)
PointCloud2 = ts.types["sensor_msgs/msg/PointCloud2"]
PointField = ts.types["sensor_msgs/msg/PointField"]
Header = ts.types["std_msgs/msg/Header"]
Time = ts.types["builtin_interfaces/msg/Time"]
String = ts.types["std_msgs/msg/String"]
PCD_TYPES = {("F", 4): 7, ("F", 8): 8, ("U", 1): 2, ("U", 2): 4, ("U", 4): 6, ("I", 1): 1, ("I", 2): 3, ("I", 4): 5}


def read_binary_pcd(path):
    data = Path(path).read_bytes()
    header, offset = {}, 0
    while True:
        end = data.index(b"\n", offset)
        line = data[offset:end].decode().split()
        offset = end + 1
        if line and not line[0].startswith("#"):
            header[line[0]] = line[1:]
            if line[0] == "DATA":
                break
    assert header["DATA"] == ["binary"], f"{path}: convert to binary PCD first"
    fields, step = [], 0
    for name, size, kind, count in zip(header["FIELDS"], header["SIZE"], header["TYPE"], header["COUNT"]):
        fields.append(PointField(name=name, offset=step, datatype=PCD_TYPES[(kind, int(size))], count=int(count)))
        step += int(size) * int(count)
    width, height = int(header["WIDTH"][0]), int(header["HEIGHT"][0])
    body = data[offset:offset + step * width * height]
    return fields, width, height, step, body


def scan_message(path, k):
    fields, width, height, step, body = read_binary_pcd(path)
    return PointCloud2(
        header=Header(stamp=Time(sec=1_700_000_000 + k, nanosec=0), frame_id="camera"), height=height,
        width=width, fields=fields, is_bigendian=False, point_step=step, row_step=step * width,
        data=np.frombuffer(body, dtype=np.uint8), is_dense=False)


def write_rosbags(path, topic, messages, plugin, version=9, compress=False, status=False, mode=None):
    shutil.rmtree(path, ignore_errors=True)
    writer = Writer(path, version=version, storage_plugin=plugin)
    if compress:
        writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    if mode is not None:
        writer.set_compression(mode, CompressionFormat.ZSTD)
    with writer:
        clouds = writer.add_connection(topic, PointCloud2.__msgtype__, typestore=ts)
        text = writer.add_connection("/status", String.__msgtype__, typestore=ts) if status else None
        for k, message in enumerate(messages):
            t = (1_700_000_000 + k) * 1_000_000_000
            writer.write(clouds, t, ts.serialize_cdr(message, PointCloud2.__msgtype__))
            if text is not None:
                writer.write(text, t + 1, ts.serialize_cdr(String(data=f"scan {k}"), String.__msgtype__))


def rewrite_with_lz4(source, target):
    with open(source, "rb") as f_in, open(target, "wb") as f_out:
        reader = make_reader(f_in)
        writer = McapWriter(f_out, compression=CompressionType.LZ4, chunk_size=1 << 20)
        writer.start(profile="ros2", library="mcap-python (inspect3d tests)")
        schemas, channels = {}, {}
        for schema, channel, message in reader.iter_messages():
            if schema.id not in schemas:
                schemas[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
            if channel.id not in channels:
                channels[channel.id] = writer.register_channel(
                    channel.topic, channel.message_encoding, schemas[schema.id], channel.metadata)
            writer.add_message(channels[channel.id], message.log_time, message.data, message.publish_time,
                               message.sequence)
        writer.finish()


def main():
    out, topic, scans = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    out.mkdir(parents=True, exist_ok=True)
    messages = [scan_message(p, k) for k, p in enumerate(scans)]
    write_rosbags(out / "mcap_zstd", topic, messages, StoragePlugin.MCAP, compress=True, status=True)

    write_rosbags(out / "mcap_lz4", topic, messages, StoragePlugin.MCAP)
    (mcap_file,) = (out / "mcap_lz4").glob("*.mcap")
    plain = mcap_file.with_suffix(".plain")
    mcap_file.rename(plain)
    rewrite_with_lz4(plain, mcap_file)
    plain.unlink()

    write_rosbags(out / "sqlite3", topic, messages, StoragePlugin.SQLITE3, version=8)
    for name, plugin in [("mcap", StoragePlugin.MCAP), ("sqlite3", StoragePlugin.SQLITE3)]:
        for mode in [CompressionMode.FILE, CompressionMode.MESSAGE]:
            write_rosbags(out / f"{name}_{mode.name.lower()}_zstd", topic, messages, plugin, mode=mode)

    half = len(messages) // 2
    split = out / "split"
    shutil.rmtree(split, ignore_errors=True)
    split.mkdir()
    parts = []
    for i, chunk in enumerate([messages[:half], messages[half:]]):
        part = out / f"split_part{i}"
        write_rosbags(part, topic, chunk, StoragePlugin.MCAP)
        (f,) = part.glob("*.mcap")
        f.rename(split / f"split_{i}.mcap")
        parts.append(yaml.safe_load((part / "metadata.yaml").read_text()))
        shutil.rmtree(part)
    info = parts[0]["rosbag2_bagfile_information"]
    info["relative_file_paths"] = ["split_0.mcap", "split_1.mcap"]
    info["message_count"] = len(messages)
    info["topics_with_message_count"][0]["message_count"] = len(messages)
    second = parts[1]["rosbag2_bagfile_information"]["files"][0]
    info["files"][0]["path"] = "split_0.mcap"
    info["files"].append(dict(second, path="split_1.mcap"))
    (split / "metadata.yaml").write_text(yaml.safe_dump(parts[0], sort_keys=False))
    print("wrote", ", ".join(sorted(p.name for p in out.iterdir())))


main()
