"""Packet capture: reading/writing pcap and pcapng files and live AF_PACKET capture.

Everything yields :class:`bridge.capture.frames.Frame` objects; the parsers are
sans-I/O (they work on bytes) and the file/socket code is a thin driver on top.
"""
