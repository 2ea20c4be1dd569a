"""Shared gRPC runtime: domain errors, status mapping, server bootstrap and client channels."""
