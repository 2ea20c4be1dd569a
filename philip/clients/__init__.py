"""Client-side helpers used by the `philip` CLI and the benchmarks (they speak only gRPC)."""
