"""The engine-event sink that turns decrypted connections into synthetic
cleartext frames and hands them to every frame output; and the one place that
builds it from settings (``tls-bridge decrypt`` flags, the sensor's ``[inject]``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bridge.errors import BridgeError

if TYPE_CHECKING:  # imported by open_reinject: a run that re-injects nothing never loads them
    from bridge.engine.events import Event
    from bridge.reinject.outputs import FrameOutput
    from bridge.reinject.synthetic import FrameBurst, SyntheticFlows


@dataclass(frozen=True, slots=True)
class ReinjectSettings:
    """Where synthetic frames go and what they look like."""

    #: pcap file (``-w``)
    pcap: str | None = None
    #: injection interface (``--inject``, the sensor's ``[inject] interface``)
    interface: str | None = None
    #: PCAP-over-IP listener, ``HOST:PORT``
    pcap_over_ip: str | None = None
    mtu: int = 1500
    server_port: int | None = None
    mark_mac: str = "02:00:00:00:00:01"
    vlan: int | None = None

    @property
    def any(self) -> bool:
        return bool(self.pcap or self.interface or self.pcap_over_ip)


def parse_mac(text: str) -> bytes:
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        raise BridgeError(f"MAC address {text!r} is not like 02:00:00:00:00:01")
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        raise BridgeError(f"MAC address {text!r} is not hexadecimal") from None


def open_reinject(settings: ReinjectSettings) -> ReinjectSink | None:
    """The sink for ``settings`` (None when no output is named); raises BridgeError."""
    if not settings.any:
        return None
    from bridge.reinject.outputs import InterfaceOutput, PcapFileOutput, PcapOverIpOutput
    from bridge.reinject.synthetic import SyntheticFlows, SyntheticOptions

    client_mac = parse_mac(settings.mark_mac)
    server_mac = client_mac[:5] + bytes([(client_mac[5] + 1) & 0xFF])
    try:
        options = SyntheticOptions(mtu=settings.mtu, server_port=settings.server_port, source_mac=client_mac,
                                   server_mac=server_mac, vlan=settings.vlan)
    except ValueError as exc:
        raise BridgeError(f"re-injection: {exc}") from None
    outputs: list[FrameOutput] = []
    try:
        if settings.pcap:
            outputs.append(PcapFileOutput(settings.pcap))
        if settings.interface:
            outputs.append(InterfaceOutput(settings.interface))
        if settings.pcap_over_ip:
            host, _, port = settings.pcap_over_ip.rpartition(":")
            if not host or not port.isdigit():
                raise BridgeError(f"PCAP-over-IP {settings.pcap_over_ip!r} is not HOST:PORT")
            outputs.append(PcapOverIpOutput(host.strip("[]"), int(port)))
    except BridgeError:
        for output in outputs:
            output.close()
        raise
    return ReinjectSink(SyntheticFlows(options), outputs)


class ReinjectSink:
    def __init__(self, synthetic: SyntheticFlows, outputs: list[FrameOutput]) -> None:
        self.synthetic = synthetic
        self.outputs = outputs
        self._last_ns = 0

    def __call__(self, event: Event) -> None:
        self._send(self.synthetic.bursts(event))

    def batch(self, events: list[Event]) -> None:
        """An engine run's events, in order: a direction's plaintexts in a row made as
        one burst (:meth:`SyntheticFlows.bursts_all`), the frames those of each event."""
        self._send(self.synthetic.bursts_all(events))  # type: ignore[arg-type]

    def describe(self, flow_id: int) -> dict[str, object] | None:
        """The flow log's ``synthetic`` field of a finished flow."""
        return self.synthetic.describe(flow_id)

    def _send(self, bursts: list[FrameBurst]) -> None:
        if not bursts:
            return
        self._last_ns = bursts[-1].timestamp_ns
        for output in self.outputs:
            for burst in bursts:
                output.write_frames(burst)

    def close(self) -> None:
        """End of input: close what is still open, then the outputs."""
        self._send(self.synthetic.close_bursts(self._last_ns))
        for output in self.outputs:
            output.close()

    def summary(self) -> str:
        frames = sum(output.stats.frames for output in self.outputs)
        dropped = sum(output.stats.dropped for output in self.outputs)
        errors = sum(output.stats.errors for output in self.outputs)
        text = f"{self.synthetic.stats.flows_started} synthetic connections, {frames} frames written"
        if dropped or errors:
            text += f", {dropped} dropped, {errors} send errors"
        return text
