"""Sends a TrainModel goal to a running inspect3d_node and prints its feedback and result: what
`ros2 action send_goal --feedback <node>/train inspect3d_msgs/action/TrainModel ...` does, for environments
without the ros2 command line (the PyPI wheels).

Ctrl-C (or SIGTERM) cancels the goal and prints CANCELED. The script always ends: after --timeout seconds it
cancels the goal, and when the node disappears mid-goal it says so.
Exit status: 0 succeeded, 1 aborted or failed, 2 timed out or the node went away, 130 cancelled.

    python3 scripts/train_goal.py --bag /data/bags/part_a_good --topic /camera/points --name part_a_v2 --activate
"""
import argparse
import signal
import sys
import time

import rclpy
from rclpy.action import ActionClient
from rclpy.signals import SignalHandlerOptions
from inspect3d_msgs.action import TrainModel

STATUS = {4: "SUCCEEDED", 5: "CANCELED", 6: "ABORTED"}
# How long the action server may be invisible before the node counts as gone (DDS notices a killed process
# only when its liveliness lease runs out).
GONE_AFTER_S = 5.0
CANCEL_WAIT_S = 30.0


class Interrupted(Exception):
    pass


class ServerGone(Exception):
    pass


def interrupt(signum, _frame):
    raise Interrupted(signal.Signals(signum).name)


def wait_for(node, client, future, deadline):
    """Spins until `future` is done; raises TimeoutError past `deadline`, ServerGone when the server vanishes."""
    missing_since = None
    while not future.done():
        rclpy.spin_once(node, timeout_sec=0.2)
        now = time.monotonic()
        if now > deadline:
            raise TimeoutError
        if client.server_is_ready():
            missing_since = None
        elif missing_since is None:
            missing_since = now
        elif now - missing_since > GONE_AFTER_S:
            raise ServerGone
    return future.result()


def print_result(outcome):
    r = outcome.result
    print(STATUS.get(outcome.status, f"status {outcome.status}"))
    print(f"model_id: {r.model_id}\nmodel_path: {r.model_path}\ncloud_threshold: {r.cloud_threshold}\n"
          f"point_threshold: {r.point_threshold}\nclouds_used: {r.clouds_used}\nclouds_held_out: {r.clouds_held_out}\n"
          f"previous_model_id: {r.previous_model_id}\nmessage: {r.message}", flush=True)


def cancel(node, client, handle, result_future):
    """Cancels the goal and waits (bounded) for its final result; returns the exit status."""
    print("cancelling…", flush=True)
    try:
        wait_for(node, client, handle.cancel_goal_async(), time.monotonic() + CANCEL_WAIT_S)
        outcome = wait_for(node, client, result_future, time.monotonic() + CANCEL_WAIT_S)
    except (TimeoutError, ServerGone):
        print(f"the node did not confirm the cancel within {CANCEL_WAIT_S:.0f} s", file=sys.stderr)
        return 2
    print_result(outcome)
    return 130 if outcome.status == 5 else (0 if outcome.result.success else 1)


def run(args, node, client):
    if not client.wait_for_server(timeout_sec=30.0):
        print(f"no action server {args.node}/train: is the node running in this ROS_DOMAIN_ID?", file=sys.stderr)
        return 2
    goal = TrainModel.Goal(bag_paths=args.bag, topic=args.topic, model_name=args.name, epochs=args.epochs,
                           target_false_reject_rate=args.rate, activate=args.activate)

    def feedback(message):
        f = message.feedback
        print(f"[{f.stage:11s}] {100 * f.progress:5.1f}%  epoch {f.epoch}/{f.epochs}  loss {f.loss:.4f}  "
              f"clouds {f.clouds_loaded}  eta {f.eta_s:.0f} s", flush=True)

    deadline = time.monotonic() + args.timeout
    handle = None
    try:
        handle = wait_for(node, client, client.send_goal_async(goal, feedback_callback=feedback), deadline)
        if not handle.accepted:
            print("REJECTED: the node refused the goal", file=sys.stderr)
            return 1
        result_future = handle.get_result_async()
        outcome = wait_for(node, client, result_future, deadline)
    except Interrupted:
        return cancel(node, client, handle, result_future) if handle is not None and handle.accepted else 130
    except TimeoutError:
        print(f"no result within --timeout {args.timeout:.0f} s", file=sys.stderr)
        if handle is not None and handle.accepted:
            cancel(node, client, handle, result_future)
        return 2
    except ServerGone:
        print(f"the action server {args.node}/train went away mid-goal (node stopped or crashed): "
              "the goal's outcome is unknown; nothing is activated by a node that is gone", file=sys.stderr)
        return 2
    print_result(outcome)
    return 0 if outcome.result.success else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--node", default="/inspect3d_node")
    parser.add_argument("--bag", action="append", required=True, help="bag folder; repeatable")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--name", required=True, help="model name: saved as <models_dir>/<name>/ (or <name>-2, …)")
    parser.add_argument("--epochs", type=int, default=0, help="0: the node's default")
    parser.add_argument("--rate", type=float, default=0.0, help="target false-reject rate; 0: the default")
    parser.add_argument("--activate", action="store_true")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds before giving up (and cancelling)")
    args = parser.parse_args()

    # Our own handlers, not rclpy's: rclpy's SIGINT handler shuts the context down, after which the cancel
    # request could not be sent.
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    node = rclpy.create_node("inspect3d_train_goal")
    client = ActionClient(node, TrainModel, f"{args.node}/train")
    try:
        code = run(args, node, client)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        node.destroy_node()
        rclpy.try_shutdown()
    sys.exit(code)


main()
