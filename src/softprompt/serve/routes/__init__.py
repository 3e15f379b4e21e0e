"""The HTTP app's routes, one module per concern, sharing `state.ServeState`.

native (/classify, /generate), openai (/v1/...: bodies, formatting, streaming), observe
(/health, /tasks, /metrics, /docs), admin (/prompts); errors holds the error handlers and
the counting middleware every route shares.
"""
