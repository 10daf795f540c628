"""`edge-somad view`: the operators' live web page (aiohttp server, per-camera state, the HTML page)."""
