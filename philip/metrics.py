"""Prometheus metrics of every PHiLIP process, served on ``PHILIP_METRICS_PORT`` (docs/OPERATIONS.md).

Metrics are module-level (one registry per process); code records where the number is known
(the RPC interceptor, the generation queue, the session manager, the training worker) and
``serve_metrics`` exposes them. With no metrics port nothing is served, recording stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RPCS = Counter("philip_rpc_total", "Finished RPCs by method and status code.", ["method", "code"])
RPC_SECONDS = Histogram("philip_rpc_duration_seconds", "RPC duration (streams: until the last message).",
                        ["method"], buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
QUEUE_DEPTH = Gauge("philip_generator_queue_depth", "Generation jobs waiting for the pipeline.")
BATCH_IMAGES = Histogram("philip_generator_batch_images", "Images per merged pipeline batch.",
                         buckets=(1, 2, 4, 8, 16, 32))
BATCH_SECONDS = Histogram("philip_generator_batch_seconds", "Wall time of one merged batch.",
                          buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60))
REJECTED = Counter("philip_generator_rejected_total", "Jobs refused with RESOURCE_EXHAUSTED (queue full).")
SESSIONS_ACTIVE = Gauge("philip_sessions_active", "Sessions with a round or upscale running on this gateway.")
STREAMS_OPEN = Gauge("philip_streams_open", "Event streams (Session, Subscribe, WatchJob, SSE) open on this gateway.")
ROUND_WAITS = Counter("philip_session_round_waits_total", "Times a session round waited out a full queue.")
TRAINING_JOBS = Counter("philip_training_jobs_total", "Training jobs ended, by final state.", ["state"])
TRAINING_RUNNING = Gauge("philip_training_running", "Training jobs this worker is running (0 or 1).")
TRAINING_STEP_SECONDS = Histogram("philip_training_step_seconds", "Wall time of one training step.",
                                  buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5))
TRAINING_YIELDED_SECONDS = Counter("philip_training_yielded_seconds_total",
                                   "Time training waited for interactive work on the same device.")
QUOTA_REJECTED = Counter("philip_quota_rejected_total", "Requests refused by a tenant quota, by quota.", ["quota"])


def serve_metrics(port: int, host: str) -> tuple[int, Callable[[], None]]:
    """Start the /metrics HTTP endpoint (port 0 = any free port): (bound port, stop function)."""
    server, thread = start_http_server(port, addr=host)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(5)

    return int(server.server_port), stop
