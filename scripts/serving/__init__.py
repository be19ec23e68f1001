"""Serving tools: the server from its wheel, the model repository, `make serve`."""
