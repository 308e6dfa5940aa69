"""The sensor bridge as a service: ``tls-bridge run`` (workers, restarts, metrics)
and its configuration file."""
