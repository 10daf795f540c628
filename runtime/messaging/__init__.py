"""The verdict stream: a frame's verdict, its wire format, bounded decoding of what arrives,
publisher, subscriber, CURVE encryption, the journal and its replay endpoint."""
