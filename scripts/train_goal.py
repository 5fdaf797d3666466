"""Sends a TrainModel goal to a running inspect3d_node and prints its feedback and result: what
`ros2 action send_goal --feedback <node>/train inspect3d_msgs/action/TrainModel ...` does, for environments
without the ros2 command line (the PyPI wheels). Ctrl-C cancels the goal.

    python3 scripts/train_goal.py --bag /data/bags/part_a_good --topic /camera/points --name part_a_v2 --activate
"""
import argparse
import sys

import rclpy
from rclpy.action import ActionClient
from inspect3d_msgs.action import TrainModel


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="/inspect3d_node")
    parser.add_argument("--bag", action="append", required=True, help="bag folder; repeatable")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--name", required=True, help="model name: saved as <models_dir>/<name>/")
    parser.add_argument("--epochs", type=int, default=0, help="0: the node's default")
    parser.add_argument("--rate", type=float, default=0.0, help="target false-reject rate; 0: the default")
    parser.add_argument("--activate", action="store_true")
    args = parser.parse_args()

    rclpy.init()
    node = rclpy.create_node("inspect3d_train_goal")
    client = ActionClient(node, TrainModel, f"{args.node}/train")
    if not client.wait_for_server(timeout_sec=30.0):
        sys.exit(f"no action server {args.node}/train: is the node running in this ROS_DOMAIN_ID?")
    goal = TrainModel.Goal(bag_paths=args.bag, topic=args.topic, model_name=args.name, epochs=args.epochs,
                           target_false_reject_rate=args.rate, activate=args.activate)

    def feedback(message):
        f = message.feedback
        print(f"[{f.stage:11s}] {100 * f.progress:5.1f}%  epoch {f.epoch}/{f.epochs}  loss {f.loss:.4f}  "
              f"clouds {f.clouds_loaded}  eta {f.eta_s:.0f} s", flush=True)

    sent = client.send_goal_async(goal, feedback_callback=feedback)
    rclpy.spin_until_future_complete(node, sent)
    handle = sent.result()
    result_future = handle.get_result_async()
    try:
        rclpy.spin_until_future_complete(node, result_future)
    except KeyboardInterrupt:
        print("cancelling…", flush=True)
        rclpy.spin_until_future_complete(node, handle.cancel_goal_async())
        rclpy.spin_until_future_complete(node, result_future)
    outcome = result_future.result()
    r = outcome.result
    print({4: "SUCCEEDED", 5: "CANCELED", 6: "ABORTED"}.get(outcome.status, f"status {outcome.status}"))
    print(f"model_id: {r.model_id}\nmodel_path: {r.model_path}\ncloud_threshold: {r.cloud_threshold}\n"
          f"point_threshold: {r.point_threshold}\nclouds_used: {r.clouds_used}\nclouds_held_out: {r.clouds_held_out}\n"
          f"previous_model_id: {r.previous_model_id}\nmessage: {r.message}")
    rclpy.shutdown()
    sys.exit(0 if r.success else 1)


main()
