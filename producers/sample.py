"""Sample L7 spans for the foundation demo and benchmarks: a small service mesh with a slow
backend, DNS failures and healthy background traffic. Ids are deterministic per (seed, index),
so re-running the demo overwrites the same documents instead of adding new ones.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from typing import Any

from tracetap.flow import Endpoint, flow_id

# (client workload, client ip, server workload, server ip, port, protocol, request_type, resource, median latency ms)
_ROUTES = [
    ("web", "10.42.0.11", "gateway", "10.42.0.12", 8080, "HTTP", "GET", "/api/orders", 12.0),
    ("gateway", "10.42.0.12", "oms-app", "10.42.0.13", 8080, "HTTP", "GET", "/orders/{id}", 8.0),
    ("oms-app", "10.42.0.13", "redis", "10.42.0.20", 6379, "REDIS", "GET", "order:*", 0.4),
    ("retail", "10.42.0.14", "acuiagwapp", "10.42.0.15", 8080, "HTTP", "POST", "/pay", 20.0),
    ("tpp-pay-1", "10.42.0.21", "kube-dns", "10.42.0.2", 53, "DNS", "A", "pay-api.svc.cluster.local", 0.3),
    ("gateway", "10.42.0.12", "kube-dns", "10.42.0.2", 53, "DNS", "A", "oms-app.default.svc.cluster.local", 0.3),
]


def sample_spans(count: int, start_ns: int, seed: int = 7) -> Iterator[dict[str, Any]]:
    """`count` L7Span records (schemas/avro/l7_span.avsc) spread over one minute after start_ns."""
    rng = random.Random(seed)
    for i in range(count):
        route = rng.randrange(len(_ROUTES))
        client, client_ip, server, server_ip, port, protocol, request_type, resource, median_ms = _ROUTES[route]
        duration_ns = int(rng.lognormvariate(0, 0.5) * median_ms * 1e6)
        code, message, error_class = (200, None, None) if protocol == "HTTP" else (0, "NOERROR" if protocol == "DNS" else None, None)
        if server == "oms-app" and rng.random() < 0.02:
            duration_ns = int(rng.uniform(2.8, 3.2) * 1e9)  # the seed's slow backend
        if protocol == "DNS" and rng.random() < 0.05:
            code, message, error_class = 3, "NXDOMAIN", "CLIENT_ERROR"
        if server == "gateway" and rng.random() < 0.03:
            code, message, error_class = 502, "Bad Gateway", "SERVER_ERROR"
        client_port = 30000 + rng.randrange(30000)
        l4 = "UDP" if protocol == "DNS" else "TCP"
        start = start_ns + rng.randrange(60_000_000_000)
        yield {
            "span_id": hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).hexdigest(),
            "protocol": protocol, "tap_side": "SERVER_PROCESS", "host": "node-1",
            "start_time": start, "end_time": start + duration_ns, "duration_ns": duration_ns,
            "flow_id": flow_id(l4, Endpoint(client_ip, client_port), Endpoint(server_ip, port)),
            "l4_protocol": l4, "client_ip": client_ip, "client_port": client_port, "server_ip": server_ip, "server_port": port,
            "client_workload": client, "server_workload": server, "pid": 1000 + route,
            "tid": None, "comm": server,
            "request_type": request_type, "request_domain": resource if protocol == "DNS" else f"{server}:{port}",
            "request_resource": resource, "endpoint": f"{request_type} {resource}",
            "response_code": code, "response_message": message, "error_class": error_class,
            "request_bytes": rng.randrange(60, 900), "response_bytes": rng.randrange(60, 9000),
            "req_tcp_seq": rng.randrange(2**32) if l4 == "TCP" else None,
            "resp_tcp_seq": rng.randrange(2**32) if l4 == "TCP" else None,
            "attributes": {"sample": "true"},
        }
