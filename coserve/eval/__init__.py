"""Offline evaluation and training of routers from outcome data; uses coserve.router, never the engine or server."""
