"""Per-job events: status/stage/progress records (SSE stream), worker log lines, monotone progress with ETA."""
