"""``tls-bridge run``: the supervisor of the sensor's worker processes.

Starts ``[capture] workers`` processes (:mod:`bridge.sensor.worker`), restarts one
that dies (with a growing delay, counted), collects their counters once a second,
serves them with ``prometheus-client`` on ``[metrics] listen`` (``/metrics``: the
text format, its content type, histograms of key lag and record hold), writes a
counter line every ``[metrics] log_interval`` seconds, and a terse live view when
stderr is a terminal.  SIGTERM/SIGINT stop the workers, which finish and log every
connection before they exit.
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from bridge.histogram import Histogram
from bridge.sensor.config import Config
from bridge.sensor.worker import run_worker

_COUNTERS = (
    ("packets", "counter", "Packets captured."),
    ("tcp_segments", "counter", "TCP segments decoded."),
    ("malformed", "counter", "Frames that could not be decoded."),
    ("flows", "counter", "TCP connections seen."),
    ("active_flows", "gauge", "Connections tracked now."),
    ("waiting_for_keys", "gauge", "Connections whose records wait for their secrets."),
    ("key_wait_expired", "counter", "Connections whose secrets did not come in time."),
    ("flows_evicted", "counter", "Connections evicted (max_flows or memory_limit; by reason: flows_evicted_by)."),
    ("half_open_flows", "gauge", "Connections tracked whose server has sent no data (a flood is made of them)."),
    ("new_flows_per_second", "gauge", "New connections per second over the worker's last report interval."),
    ("memory_used_bytes", "gauge", "Bytes the decryptor holds (charged against memory_limit_bytes)."),
    ("memory_limit_bytes", "gauge", "The decryptor's memory budget ([decrypt] memory_limit)."),
    ("flows_summarised", "counter",
     "Never-completed connections counted only in the flow log's summary lines."),
    ("plaintext_bytes", "counter", "Bytes of decrypted application data."),
    ("capture_drops", "counter", "Packets the kernel dropped before the worker read them."),
    ("injected_frames", "counter", "Synthetic cleartext frames written."),
    ("inject_dropped", "counter", "Synthetic frames the kernel had no room for (never waited on)."),
    ("feed_records", "counter", "Key feed records received."),
    ("feed_malformed", "counter", "Malformed key feed messages dropped."),
    ("feed_lost", "counter", "Key feed records given up as lost."),
    ("key_requests", "counter",
     "Key requests sent to the feed's harvesters (new connections without secrets, their ends)."),
    ("fast_path_frames", "counter",
     "Frames the compiled path took: established connections' that carry bulk, and those of connections whose "
     "server has not answered (replayed through the Python path once it does)."),
    ("fast_path_records", "counter", "Records of application data the compiled path decrypted (the steady state)."),
)
#: Histograms the workers report (bridge.engine.decryptor.DecryptorStats), by metric name.
_HISTOGRAMS = (
    ("key_lag_seconds",
     "Seconds from a connection's ClientHello seen to its first secret in the key store (0: there already)."),
    ("record_hold_seconds", "Seconds a TLS record waited for its connection's secrets before it was decrypted."),
)


@dataclass
class _Worker:
    index: int
    process: Any = None
    connection: Any = None
    restarts: int = 0
    next_start: float = 0.0
    counters: dict[str, Any] = field(default_factory=dict)
    #: Counters of earlier incarnations (a restarted worker starts from zero).
    carried: dict[str, int] = field(default_factory=dict)
    carried_histograms: dict[str, Histogram] = field(default_factory=dict)

    def histogram(self, name: str) -> Histogram | None:
        """This worker's histogram over all its incarnations."""
        reported = self.counters.get("histograms", {}).get(name)
        carried = self.carried_histograms.get(name)
        if reported is None:
            return carried
        histogram = Histogram.from_dict(reported)
        if carried is not None:
            histogram.add(carried)
        return histogram


class Supervisor:
    def __init__(self, config: Config, *, err: IO[str] = sys.stderr) -> None:
        self.config = config
        self.err = err
        self._context = multiprocessing.get_context("spawn")
        self.workers = [_Worker(index) for index in range(config.capture.workers)]
        self.stop = threading.Event()
        self.started = time.monotonic()
        self._server: Any = None
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    # --- workers -----------------------------------------------------------------------------

    def _start(self, worker: _Worker) -> None:
        parent, child = self._context.Pipe(duplex=False)
        worker.process = self._context.Process(target=run_worker, args=(self.config.as_dict(), worker.index, child),
                                               name=f"tls-bridge-worker-{worker.index}", daemon=True)
        worker.process.start()
        child.close()
        worker.connection = parent

    def _collect(self, worker: _Worker) -> None:
        try:
            while worker.connection is not None and worker.connection.poll():
                worker.counters = worker.connection.recv()
        except (EOFError, OSError):
            worker.connection = None

    def _watch(self, worker: _Worker, now: float) -> None:
        if worker.process is not None and worker.process.is_alive():
            return
        if worker.process is not None:
            code = worker.process.exitcode
            self._collect(worker)
            for name, _kind, _help in _COUNTERS:
                if _kind == "counter":
                    worker.carried[name] = worker.carried.get(name, 0) + int(worker.counters.get(name, 0))
            for name, _help in _HISTOGRAMS:
                histogram = worker.histogram(name)
                if histogram is not None:
                    worker.carried_histograms[name] = histogram
            worker.counters = {}
            worker.restarts += 1
            delay = min(30.0, 0.5 * 2 ** min(worker.restarts, 6))
            worker.next_start = now + delay
            worker.process = None
            self.say(f"worker {worker.index} exited (code {code}); restarting in {delay:g} s")
        if now >= worker.next_start:
            self._start(worker)

    def workers_up(self) -> int:
        """Workers that are running and have reported since they started: their
        capture sockets are open (and in the fanout group)."""
        return sum(1 for w in self.workers if w.process is not None and w.process.is_alive() and w.counters)

    # --- counters -------------------------------------------------------------------------------

    def totals(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for worker in self.workers:
            for name, kind, _help in _COUNTERS:
                value = int(worker.counters.get(name, 0))
                if kind == "counter":
                    value += worker.carried.get(name, 0)
                totals[name] = totals.get(name, 0) + value
            for status, count in worker.counters.get("statuses", {}).items():
                totals[f"status:{status}"] = totals.get(f"status:{status}", 0) + int(count)
        totals["restarts"] = sum(worker.restarts for worker in self.workers)
        return totals

    def prometheus(self) -> str:
        """What ``/metrics`` serves (the Prometheus text format)."""
        return generate_latest(self.registry).decode()

    def line(self) -> str:
        totals = self.totals()
        elapsed = max(time.monotonic() - self.started, 1e-9)
        decrypted = totals.get("status:decrypted", 0)
        return (f"{totals['packets']} packets ({totals['packets'] / elapsed:,.0f}/s), {totals['flows']} connections "
                f"({totals['active_flows']} open, {totals['waiting_for_keys']} waiting for keys), {decrypted} "
                f"decrypted, {totals['key_wait_expired']} key waits expired, {totals['capture_drops'] + totals['inject_dropped']} "
                f"dropped, {totals['plaintext_bytes'] / 1e6:,.1f} MB plaintext, {totals['restarts']} worker restarts")

    def say(self, text: str) -> None:
        self.err.write(f"tls-bridge: {text}\n")
        self.err.flush()

    # --- metrics endpoint ---------------------------------------------------------------------

    def _serve_metrics(self) -> None:
        host, _, port = self.config.metrics.listen.rpartition(":")
        self._server, _thread = start_http_server(int(port), host.strip("[]") or "127.0.0.1", self.registry)

    # --- driving --------------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: self.stop.set())
        for worker in self.workers:
            self._start(worker)
        if self.config.metrics.listen:
            try:
                self._serve_metrics()
            except OSError as exc:
                self.say(f"warning: metrics endpoint {self.config.metrics.listen}: {exc.strerror}")
        self.say(f"running {len(self.workers)} workers on {', '.join(self.config.capture.interfaces)}; "
                 f"injecting on {self.config.inject.interface or '(none)'}; flows to {self.config.output.flows}"
                 + (f"; metrics on http://{self.config.metrics.listen}/metrics" if self.config.metrics.listen else ""))
        tty = self.err.isatty()
        next_log = time.monotonic() + (self.config.metrics.log_interval or float("inf"))
        while not self.stop.wait(0.5):
            now = time.monotonic()
            for worker in self.workers:
                self._collect(worker)
                self._watch(worker, now)
            if tty:
                self.err.write("\r" + self.line()[:160] + "\x1b[K")
                self.err.flush()
            elif now >= next_log:
                self.say(self.line())
                next_log = now + self.config.metrics.log_interval
        return self.shutdown(tty)

    def shutdown(self, tty: bool = False) -> int:
        for worker in self.workers:
            if worker.process is not None and worker.process.is_alive():
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(30)
                if worker.process.is_alive():
                    worker.process.kill()
            self._collect(worker)
        if self._server is not None:
            self._server.shutdown()
        if tty:
            self.err.write("\r\x1b[K")
        self.say("stopped: " + self.line())
        return 0


class _Collector:
    """The workers' last reports as Prometheus metric families, at each scrape."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor

    def collect(self):  # type: ignore[no-untyped-def]
        workers = self.supervisor.workers
        for name, kind, help_text in _COUNTERS:
            family = (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(
                f"tls_bridge_{name}", help_text, labels=["worker"])
            for worker in workers:
                value = int(worker.counters.get(name, 0)) + (worker.carried.get(name, 0) if kind == "counter" else 0)
                family.add_metric([str(worker.index)], value)
            yield family
        logged = CounterMetricFamily("tls_bridge_flows_logged", "Connections logged, by status.",
                                     labels=["worker", "status"])
        for worker in workers:
            for status, count in sorted(worker.counters.get("statuses", {}).items()):
                logged.add_metric([str(worker.index), status], int(count))
        yield logged
        evicted = CounterMetricFamily("tls_bridge_flows_evicted_by", "Connections evicted, by reason (half_open, "
                                      "idle, oldest: the order they are tried).", labels=["worker", "reason"])
        for worker in workers:
            for reason, count in sorted(worker.counters.get("evicted", {}).items()):
                evicted.add_metric([str(worker.index), reason], int(count))
        yield evicted
        restarts = CounterMetricFamily("tls_bridge_worker_restarts", "Worker processes restarted.", labels=["worker"])
        for worker in workers:
            restarts.add_metric([str(worker.index)], worker.restarts)
        yield restarts
        yield GaugeMetricFamily("tls_bridge_workers_up", "Worker processes capturing (running, capture sockets open).",
                                value=self.supervisor.workers_up())
        for name, help_text in _HISTOGRAMS:
            family = HistogramMetricFamily(f"tls_bridge_{name}", help_text, labels=["worker"])
            for worker in workers:
                histogram = worker.histogram(name) or Histogram()
                family.add_metric([str(worker.index)], histogram.cumulative(), histogram.sum)
            yield family
