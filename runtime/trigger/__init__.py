"""Triggered inspection: a PLC names a part, the box scores the first frame after the trigger and
answers with that part's verdict (or an explicit error) before the deadline.

request  TriggerRequest: the part id, when the trigger arrived, its deadline (validated)
control  the `run --control` ZeroMQ ROUTER endpoint: JSON commands through a dispatch table
client   request_trigger / request: what the CLI, the OPC UA method and the MQTT command call
book     TriggerBook: pending triggers -> frames -> answers, deadlines, duplicate part ids
"""
