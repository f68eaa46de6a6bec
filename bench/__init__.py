"""``python -m bench``: redlight's performance, measured against a floor taken in the same run.

Everything runs on this machine: a private mosquitto on a free port (never the shared one on
1883), bare paho clients in the seat of Home Assistant and of the plugs, and the real
``redlight run`` process. Every latency is also given as a ratio to the floor: a bare paho
command, plug, state round trip through the same broker, measured interleaved with it.
"""
