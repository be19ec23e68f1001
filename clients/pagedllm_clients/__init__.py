"""Clients of the served model (installed as `pagedllm_clients`): generate, cancel, load.

Each is also a console script (pagedllm-generate, pagedllm-cancel, pagedllm-load) and runs as a
file: `python clients/pagedllm_clients/generate.py "def fib(n):"`.
"""
