"""Serving many tasks from one frozen backbone.

`store` keeps prompt files by task and version; `cache` holds each task's prompt
keys/values, computed once; `engine` runs mixed-task batches from that cache;
`batcher` gathers concurrent requests into shared forward passes; `app` is the
HTTP server (FastAPI) on top.
"""
