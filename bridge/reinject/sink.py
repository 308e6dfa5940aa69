"""The decryptor-event sink that turns decrypted connections into synthetic
cleartext frames and hands them to every output."""

from __future__ import annotations

from bridge.decryptor import Event
from bridge.reinject.outputs import FrameOutput
from bridge.reinject.synthetic import SyntheticFlows


class ReinjectSink:
    def __init__(self, synthetic: SyntheticFlows, outputs: list[FrameOutput]) -> None:
        self.synthetic = synthetic
        self.outputs = outputs
        self._last_ns = 0

    def __call__(self, event: Event) -> None:
        self._send(self.synthetic.handle(event))

    def _send(self, frames) -> None:
        for frame in frames:
            self._last_ns = frame.timestamp_ns
            for output in self.outputs:
                output.write(frame.timestamp_ns, frame.data)

    def close(self) -> None:
        """End of input: close what is still open, then the outputs."""
        self._send(self.synthetic.close(self._last_ns))
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
