"""Generator service: batched low-resolution generation with live previews."""
