"""Factory integration: verdicts from `run` to an MQTT broker or an OPC UA server, with
store-and-forward and recovery of what a bridge missed."""
