"""``gproc web``: the cluster in a browser, served by aiohttp, talking to the master only through the
Python API (``gproc.client``) as the user who started it."""
