"""A Ray cluster of two nodes on this machine, for tests/test_engine_ray_nodes.py: two raylets on 127.0.0.1 with one
CPU each (`ray.cluster_utils.Cluster`), the head with its dashboard (Ray's state API), held by this process until
its stdin closes. Run as `python ray_two_nodes.py`, with RAY_TMPDIR set to a short folder of its own.

It prints one JSON line, {"address": the GCS address, "nodes": [node ids]}; then for every line read from stdin,
one JSON line {job id: [[function, node id, state], ...]}: the tasks of every job so far, from the state API.
"""

from __future__ import annotations

import json
import os
import sys
from collections import defaultdict

from ray.cluster_utils import Cluster
from ray.util.state import list_tasks


def main() -> None:
    out = os.fdopen(os.dup(1), "w")  # the answers; anything else written to stdout, by Ray's processes too, goes to stderr
    os.dup2(2, 1)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": True, "dashboard_host": "127.0.0.1"})
    try:
        cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        nodes = [n.node_id for n in cluster.list_all_nodes()]
        print(json.dumps({"address": cluster.address, "nodes": nodes}), file=out, flush=True)
        dashboard = f"http://{cluster.webui_url}"
        for _ in sys.stdin:
            jobs: dict[str, list] = defaultdict(list)
            for t in list_tasks(address=dashboard, detail=True, limit=10_000, raise_on_missing_output=False):
                jobs[t.job_id].append([t.func_or_class_name, t.node_id, t.state])
            print(json.dumps(jobs), file=out, flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
