"""rclpy peer: publishes an organised 4x3 PointCloud2 laid out as differently as the message allows (big-endian,
FLOAT64 x/y/z, an INT16 field with count 2, padding inside points and after rows, a NaN hole) until killed.
Usage: publish_cloud.py TOPIC"""
import math
import struct
import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import PointCloud2, PointField

WIDTH, HEIGHT = 4, 3
POINT_STEP = 3 * 8 + 2 * 2 + 4  # xyz doubles, two int16, 4 bytes padding
ROW_STEP = WIDTH * POINT_STEP + 16  # row padding


def make_cloud():
    data = bytearray(b"\xee" * (ROW_STEP * HEIGHT))
    for r in range(HEIGHT):
        for c in range(WIDTH):
            at = r * ROW_STEP + c * POINT_STEP
            xyz = (math.nan,) * 3 if (r, c) == (1, 2) else (c + 0.25, r - 1.0, 2.5 * (c + r))
            struct.pack_into(">3d2h", data, at, *xyz, r * 4 + c, -(r * 4 + c) * 3)
    m = PointCloud2()
    m.header.frame_id = "peer"
    m.height, m.width = HEIGHT, WIDTH
    m.fields = [PointField(name=n, offset=8 * i, datatype=PointField.FLOAT64, count=1) for i, n in enumerate("xyz")]
    m.fields.append(PointField(name="intensity", offset=24, datatype=PointField.INT16, count=2))
    m.is_bigendian, m.point_step, m.row_step, m.is_dense = True, POINT_STEP, ROW_STEP, False
    m.data = bytes(data)
    return m


def main():
    rclpy.init()
    node = rclpy.create_node("inspect3d_test_peer")
    pub = node.create_publisher(PointCloud2, sys.argv[1], qos_profile_sensor_data)
    msg = make_cloud()
    node.create_timer(0.2, lambda: pub.publish(msg))
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):  # Ctrl-C, or SIGTERM from the test
        pass


if __name__ == "__main__":
    main()
