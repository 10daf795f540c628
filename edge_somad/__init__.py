"""edge-somad: SOMAD anomaly detection from good parts to a PLC, on the edge."""

__version__ = "0.1.0"
