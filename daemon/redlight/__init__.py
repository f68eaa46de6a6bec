"""redlight: safe timed red-light therapy sessions on MQTT smart plugs."""

__version__ = "0.1.0"
